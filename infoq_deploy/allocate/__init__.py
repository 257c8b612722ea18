"""Stage 4, allocate: sensitivity table + target in, per-layer bit-widths under the budgets out (an ILP)."""
