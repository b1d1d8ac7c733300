"""Tiny artifacts (random 3-layer Llama, byte-level tokenizer) compiled the way `accelc compile` does:
the cpu/npu target's export-onnx, export-openvino and validate passes, tokenizer, manifest."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from accelc.models.tiny import byte_tokenizer as tiny_byte_tokenizer, tiny_model

EOS = 256
CHAT_TEMPLATE = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}<assistant>"


def byte_tokenizer(chat: bool = True):
    return tiny_byte_tokenizer(CHAT_TEMPLATE if chat else None)


def tiny_lm(seed: int = 0):
    # a wide init so that greedy decoding does not just repeat one token
    return tiny_model("llama", seed=seed, vocab_size=EOS + 1, initializer_range=0.25)


def build_tiny_artifact(out: Path, static: bool = False, cache_len: int = 48, chunk: int = 8, seed: int = 0) -> Path:
    """Compile a tiny model into `out` with the library API, as `accelc compile` does."""
    import accelc
    src = out.parent / f"{out.name}-source"          # the source checkpoint (the torch backend reloads it)
    tiny_lm(seed).save_pretrained(src)
    byte_tokenizer().save_pretrained(src)
    return accelc.compile(str(src), "npu" if static else "cpu", out, cache_len=cache_len, prefill_chunk=chunk)


@pytest.fixture(scope="session")
def tiny_artifact(tmp_path_factory) -> Path:
    return build_tiny_artifact(tmp_path_factory.mktemp("art") / "tiny-cpu")


@pytest.fixture(scope="session")
def tiny_static_artifact(tmp_path_factory) -> Path:
    return build_tiny_artifact(tmp_path_factory.mktemp("art") / "tiny-npu", static=True)


def torch_greedy_ids(prompt_ids: list[int], n: int, seed: int = 0) -> list[int]:
    """transformers greedy continuation of the same tiny model (the reference)."""
    model = tiny_lm(seed)
    with torch.inference_mode():
        out = model.generate(torch.tensor([prompt_ids]), max_new_tokens=n, do_sample=False, eos_token_id=None,
                             pad_token_id=0, min_new_tokens=n)
    return out[0, len(prompt_ids):].tolist()


@pytest.fixture(scope="session")
def torch_greedy():
    """prompt ids, n -> the transformers greedy continuation of the tiny model (reference)."""
    return torch_greedy_ids
