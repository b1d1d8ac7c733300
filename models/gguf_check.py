"""A second, independent reading of a GGUF file, compared with what transformers loaded from it.

transformers' GGUF loader has mis-loaded real checkpoints (a Gemma-3 GGUF generated garbage under the
pinned 5.5.4), and the validation pass cannot see that: it compares the exported graphs with the same
torch model. So every GGUF load is checked here against the file itself, read with the `gguf` package:

  - config: each hyperparameter the file records (layers, hidden size, feed-forward size, heads, KV heads,
    head size, RoPE base, RMS-norm epsilon, context length, sliding window) must equal the loaded config's;
  - weights: every tensor, dequantized by the gguf package and mapped to its transformers name with
    llama.cpp's conventions (convert_hf_to_gguf.py) undone per family: Llama-style Q/K rows are permuted
    for its RoPE layout (`permute(w, n_head, n_head_kv)`), Gemma-family norm weights are stored as 1 + w,
    GGUF dims are reversed; must equal the loaded parameter.
A mismatch is one InputError naming the tensor or field. Families without a convention table here are
refused by the adapter before this runs.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..compiler.errors import InputError

log = logging.getLogger(__name__)

PERMUTED_QK = ("llama",)                         # GGUF architectures whose q/k rows llama.cpp permutes
NORM_PLUS_ONE = ("gemma", "gemma2", "gemma3")    # stored as 1 + w
# GGUF metadata key (after "{arch}.") -> transformers config attribute
CONFIG_KEYS = {"block_count": "num_hidden_layers", "embedding_length": "hidden_size",
               "feed_forward_length": "intermediate_size", "attention.head_count": "num_attention_heads",
               "attention.head_count_kv": "num_key_value_heads", "attention.key_length": "head_dim",
               "attention.layer_norm_rms_epsilon": "rms_norm_eps", "context_length": "max_position_embeddings",
               "attention.sliding_window": "sliding_window", "rope.freq_base": "rope_theta"}


def _field(reader, key):
    f = reader.fields.get(key)
    if f is None or not f.data:
        return None
    v = f.parts[f.data[0]]
    return v.tolist()[0] if hasattr(v, "tolist") and np.size(v) == 1 else None


def _config_value(config, attr):
    if attr == "rope_theta":
        params = getattr(config, "rope_parameters", None) or {}
        return params.get("rope_theta", getattr(config, "rope_theta", None)) if isinstance(params, dict) else None
    return getattr(config, attr, None)


def check_config(reader, arch: str, config) -> None:
    for key, attr in CONFIG_KEYS.items():
        want, have = _field(reader, f"{arch}.{key}"), _config_value(config, attr)
        if want is None or have is None or isinstance(have, (list, dict)):
            continue
        same = np.isclose(float(want), float(have), rtol=1e-5) if isinstance(want, float) else int(want) == int(have)
        if not same:
            raise InputError(f"the model loaded from this GGUF file disagrees with the file: {attr} = {have}, "
                             f"the file's {arch}.{key} = {want} (transformers mis-loaded it; not compiled)")


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of llama.cpp's permute(w, n_head): [n_head, 2, d/2, ...] <- [n_head, d/2, 2, ...]."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _to_hf(arch: str, hf_name: str, w: np.ndarray, config) -> np.ndarray:
    if arch in PERMUTED_QK:
        heads, kv = config.num_attention_heads, getattr(config, "num_key_value_heads", None) or \
            config.num_attention_heads
        if hf_name.endswith("self_attn.q_proj.weight"):
            w = _unpermute(w, heads)
        elif hf_name.endswith("self_attn.k_proj.weight"):
            w = _unpermute(w, kv)
    if arch in NORM_PLUS_ONE and hf_name.endswith("norm.weight"):
        w = w - 1
    return w


def check_weights(reader, arch: str, model, atol: float = 1e-6) -> int:
    """Compare every loaded parameter with the file's tensor; -> tensors compared."""
    import gguf
    from gguf.quants import dequantize
    enum = {v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}.get(arch)
    if enum is None:
        raise InputError(f"GGUF architecture '{arch}' has no reference reading here")
    names = gguf.get_tensor_name_map(enum, model.config.num_hidden_layers)
    tensors = {t.name: t for t in reader.tensors}
    tied = getattr(model.config, "tie_word_embeddings", False)
    compared = 0
    for hf_name, p in model.state_dict().items():
        if hf_name == "lm_head.weight" and tied:
            continue
        gname = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        t = tensors.get(gname)
        if t is None:
            raise InputError(f"the GGUF file has no tensor for {hf_name} (expected {gname})")
        ref = dequantize(t.data, t.tensor_type).astype(np.float32).reshape([int(d) for d in reversed(t.shape)])
        ref = _to_hf(arch, hf_name, ref, model.config)
        have = p.detach().float().numpy()
        if ref.shape != have.shape or not np.allclose(ref, have, atol=atol, rtol=1e-5):
            diff = float(np.abs(ref - have).max()) if ref.shape == have.shape else float("nan")
            raise InputError(f"transformers mis-loaded {hf_name} from the GGUF file (shape {list(have.shape)} vs "
                             f"{list(ref.shape)}, max |diff| {diff:.3g}); not compiled")
        compared += 1
    return compared


def check_gguf_load(path: Path, model) -> dict:
    """Config and every weight of `model` against the GGUF file it was loaded from; InputError on a mismatch."""
    from gguf import GGUFReader
    reader = GGUFReader(str(path))
    arch_field = reader.fields.get("general.architecture")
    arch = bytes(arch_field.parts[arch_field.data[0]]).decode() if arch_field is not None else None
    if arch is None:
        raise InputError(f"{Path(path).name} records no general.architecture")
    check_config(reader, arch, model.config)
    n = check_weights(reader, arch, model)
    log.info("GGUF check: %s config and %d tensors match the file", arch, n)
    return {"architecture": arch, "tensors_checked": n}
