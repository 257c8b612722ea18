"""Stage 2, data: data in (image folders, archives, tensor files, built-in sets), normalised tensors and sample plans out."""
