"""Stage 3, profile: model + data in, a sensitivity table out; one module per method, registered by name in registry.py."""
