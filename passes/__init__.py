"""accelc.passes: one pass per file (pruning, quantization, drafter, cache, export, validation)."""
