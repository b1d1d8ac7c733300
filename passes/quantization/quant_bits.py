"""Bit accounting of a quantized model: bits per weight over the decoder Linears, embeddings apart.

Quantized modules (CodebookLinear, GroupQuantLinear) report their own storage through `bits()`
(packed codes plus fp16 codebooks / scales / zero points); a plain nn.Linear counts 32 bits per
weight. The embedding and the LM head are not quantized by these passes: they stay fp32 in torch
and are counted separately (a tied embedding/head once). Biases are counted separately too.
"""
from __future__ import annotations




def bits_summary(adapter) -> dict:
    parts = {"codes": 0, "codebooks": 0, "scales": 0, "zeros": 0, "fp32": 0}
    weights = bias = 0
    for lin in adapter.linears().values():
        if hasattr(lin, "bits"):
            b = lin.bits()
            for k in parts:
                parts[k] += b.get(k, 0)
            weights += b["weights"]
        else:
            parts["fp32"] += 32 * lin.weight.numel()
            weights += lin.weight.numel()
        if getattr(lin, "bias", None) is not None:
            bias += lin.bias.numel()
    total = sum(parts.values())
    embed = adapter.embed.weight.numel()
    head = 0 if adapter.tied_embeddings else adapter.head.weight.numel()
    return {
        "bits_per_weight": round(total / max(weights, 1), 5),
        "linear_weights": weights,
        "linear_bits": total,
        "linear_bits_breakdown": {k: v for k, v in parts.items() if v},
        "linear_bias_params_fp32": bias,
        "embedding": {"policy": "not quantized here: fp32 in torch (tied embedding/head counted once); "
                                "`--weights int8` export stores it at int8",
                      "params": embed + head, "tied": adapter.tied_embeddings, "bits_fp32": 32 * (embed + head)},
    }


