"""infoq-deploy: from a trained network to a verified mixed-precision graph."""

__version__ = "0.1.0"
