"""Tiny random configs of each supported family, for unit tests (seconds, no network)."""
from __future__ import annotations

import torch
from transformers import (AutoModelForCausalLM, Gemma2Config, Gemma3TextConfig, GemmaConfig, LlamaConfig,
                          MistralConfig, Qwen2Config)

_COMMON = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)


def tiny_config(family: str):
    if family == "llama":
        return LlamaConfig(**_COMMON, tie_word_embeddings=True)
    if family == "mistral":
        return MistralConfig(**_COMMON, sliding_window=None)
    if family == "qwen2":
        return Qwen2Config(**_COMMON, tie_word_embeddings=True)
    if family == "gemma":
        return GemmaConfig(**_COMMON, head_dim=16)
    if family == "gemma2":
        return Gemma2Config(**_COMMON, head_dim=16, sliding_window=64, query_pre_attn_scalar=16)
    if family == "gemma3_text":
        return Gemma3TextConfig(**_COMMON, head_dim=16, sliding_window=64, query_pre_attn_scalar=16)
    raise ValueError(f"no tiny config for {family}")


TINY_FAMILIES = ("llama", "mistral", "qwen2", "gemma", "gemma2", "gemma3_text")


def tiny_model(family: str = "llama", seed: int = 0, **overrides):
    """A tiny random model in eval mode, fp32, eager attention."""
    cfg = tiny_config(family)
    for k, v in overrides.items():
        setattr(cfg, k, v)
    types = getattr(cfg, "layer_types", None)
    if types and len(types) != cfg.num_hidden_layers:     # a layer-count override: repeat the family's pattern
        cfg.layer_types = [types[i % len(types)] for i in range(cfg.num_hidden_layers)]
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")
    return model.eval()


def tiny_tokenizer(vocab_size: int = 256):
    """A byte-level tokenizer for tiny models: ids 0..2 are <unk>/<s>/</s>, then the 253 most useful bytes.

    Round-trips ASCII text; enough for runtime and CLI tests without any download.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>"]
    byte_tokens = [chr(c) for c in range(32, 127)] + ["\n", "\t"]
    vocab = {t: i for i, t in enumerate(specials + byte_tokens)}
    i = len(vocab)
    while i < vocab_size:  # pad the vocabulary with unused pieces so ids cover the model's embedding
        vocab[f"<extra_{i}>"] = i
        i += 1
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="</s>", clean_up_tokenization_spaces=False)


def save_tiny_model_folder(path, family: str = "llama", seed: int = 0):
    """Write a tiny random model + tokenizer as a transformers folder (safetensors)."""
    m = tiny_model(family, seed=seed)
    m.save_pretrained(path, safe_serialization=True)
    tiny_tokenizer(m.config.vocab_size).save_pretrained(path)
    return path


BYTE_EOS = 256


def byte_tokenizer(chat_template: str | None = None):
    """A byte-level BPE tokenizer with no merges: the 256 byte symbols are ids 0..255, <eos> is 256.

    For tiny models with vocab_size >= 257 (runtime, drafter and export tests)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    vocab["<eos>"] = BYTE_EOS
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<eos>")
    if chat_template:
        tok.chat_template = chat_template
    return tok


def tiny_bundle(family: str = "llama", seed: int = 0):
    """A ModelBundle around tiny_model(family, seed), no tokenizer: for pass unit tests."""
    from ..compiler.bundle import ModelBundle
    from .adapter import ArchAdapter
    m = tiny_model(family, seed=seed)
    return ModelBundle(model=m, tokenizer=None, adapter=ArchAdapter(m))


def random_ids(n: int = 8, t: int = 32, seed: int = 0, vocab: int = 256) -> torch.Tensor:
    """[n, t] seeded random token ids (calibration batches for tiny models)."""
    return torch.randint(0, vocab, (n, t), generator=torch.Generator().manual_seed(seed))
