"""Stage 6, export: quantized model in, an ONNX file in a registered format out (registry.py)."""
