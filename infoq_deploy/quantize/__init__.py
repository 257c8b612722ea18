"""Stage 5, quantize: allocation in, a calibrated (and optionally fine-tuned) Brevitas model and its file out."""
