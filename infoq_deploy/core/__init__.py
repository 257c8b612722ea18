"""Shared small parts beneath every stage: errors, atomic writes, the quantizer rule, targets, evaluation."""
