"""Stage 7, back ends: what consumes an exported file, one module per consumer, registered by name (registry.py)."""
