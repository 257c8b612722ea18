"""Stage 1, import: a model in (torch.fx, ONNX, zoo, file.py:factory), an fx GraphModule and its layer table out."""
