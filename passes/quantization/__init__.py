"""Quantization passes (docs/passes/quantization.md): additive codebooks (codebook.py, codebook_linear.py,
codebook_search.py), PV-Tuning and straight-through tuning (pv_tuning.py), round-to-nearest (rtn.py), the
`--quantize` spec builder (quant_methods.py). May import passes/calibration.py and the compiler core."""
