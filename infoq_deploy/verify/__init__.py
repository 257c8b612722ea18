"""Stage 8, verify: an exported file run by its consumer against the quantized model it came from."""
