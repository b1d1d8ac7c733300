"""Rebuild a byte-level BPE tokenizer from a GGUF file's metadata.

transformers 5.5.4 turns SmolLM2's GGUF tokenizer into a Metaspace (SentencePiece-style) tokenizer
that splits text wrongly (perplexity in the tens of thousands). For GGUF files whose tokenizer
model is "gpt2" (byte-level BPE) we rebuild it from the vocabulary and merges as llama.cpp reads
them; other tokenizer models go through transformers' own loader.
"""
from __future__ import annotations

from pathlib import Path

# llama.cpp pre-tokenizer names -> the tokenizers pre-tokenizer pipeline they stand for
_PRE = {
    "smollm": "digits+bytelevel",   # \p{N} split into single digits, then the GPT-2 regex
    "gpt2": "bytelevel",
    "default": "bytelevel",
}


def _field(reader, key, default=None):
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def bpe_tokenizer_from_gguf(path: Path):
    """A PreTrainedTokenizerFast for a GGUF with tokenizer.ggml.model == 'gpt2', else None."""
    from gguf import GGUFReader
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    r = GGUFReader(str(path))
    if _field(r, "tokenizer.ggml.model") != "gpt2":
        return None
    pre = _PRE.get(_field(r, "tokenizer.ggml.pre", "default"))
    if pre is None:
        return None
    tokens = _field(r, "tokenizer.ggml.tokens")
    merges = [tuple(m.split(" ", 1)) for m in _field(r, "tokenizer.ggml.merges")]
    types = _field(r, "tokenizer.ggml.token_type", [1] * len(tokens))
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre == "digits+bytelevel":
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    else:
        tok.pre_tokenizer = byte_level
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    # control tokens (type 3) are special: never split, skipped when decoding with skip_special_tokens
    specials = [t for t, ty in zip(tokens, types) if ty == 3]

    def tok_at(key):
        i = _field(r, key)
        return tokens[i] if i is not None and 0 <= i < len(tokens) else None

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=tok_at("tokenizer.ggml.bos_token_id"),
        eos_token=tok_at("tokenizer.ggml.eos_token_id"), unk_token=tok_at("tokenizer.ggml.unknown_token_id"),
        pad_token=tok_at("tokenizer.ggml.padding_token_id"), additional_special_tokens=specials,
        clean_up_tokenization_spaces=False)
    fast.add_bos_token = bool(_field(r, "tokenizer.ggml.add_bos_token", False))
    template = _field(r, "tokenizer.chat_template")
    if template:
        fast.chat_template = template
    return fast
