"""Encoder-decoder conversion (`--convert encdec:...`, docs/passes/encdec.md): a decoder-only model becomes an
encoder (a bidirectional copy of its layers) and a decoder (all or N of its layers) that attends over the encoder's
memory and its own cache with the same attention weights (merged attention), adapted by PrefixLM distillation
from the source model, and exported as an encoder graph and a decoder graph.

options.py   the spec and its checks (no torch)
model.py     building the encoder-decoder from the source model; its torch forward
train.py     adaptation: PrefixLM + distillation from the source, resumable, time-bounded
convert.py   the conversion pass (convert-encdec)
export.py    the encoder graph's export (export-encoder); the decoder exports as any decoder does
"""
