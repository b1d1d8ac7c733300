"""Rebuild a GGUF file's tokenizer from its metadata, as llama.cpp reads it.

transformers 5.5.4 mis-reads GGUF tokenizers: SmolLM2's byte-level BPE ("gpt2") became a Metaspace
tokenizer that splits text wrongly (perplexity in the tens of thousands), and Gemma-3's SentencePiece
("llama") tokenizer splits words into characters and drops BOS (the model then generated garbage while
loading correctly). So both are rebuilt here:
  - "gpt2": byte-level BPE from the vocabulary and merges;
  - "llama" (SentencePiece BPE): BPE over the pieces with merges derived from the piece scores (the
    procedure of tokenizers' SentencePieceExtractor: every split of a piece into two pieces is a merge,
    ranked by the whole piece's score), byte fallback, spaces as U+2581 (prefixed when the file says
    add_space_prefix), BOS/EOS added as the file's add_bos/add_eos flags say.
Other tokenizer models go through transformers' own loader.
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
    if _field(r, "tokenizer.ggml.model") == "llama":
        return spm_tokenizer_from_gguf(r)
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


def _spm_merges(tokens: list[str], scores: list[float], usable: list[bool]) -> list[tuple[str, str]]:
    """Merges of a SentencePiece BPE vocabulary: each split of a piece into two pieces, ranked by the piece's
    score (highest first), ties by the halves' ids."""
    vocab = {t: i for i, t in enumerate(tokens) if usable[i]}
    ranked = []
    for piece, i in vocab.items():
        local = [(vocab[piece[:k]], vocab[piece[k:]], piece[:k], piece[k:]) for k in range(1, len(piece))
                 if piece[:k] in vocab and piece[k:] in vocab]
        ranked.extend((-scores[i], a, b, left, right) for a, b, left, right in sorted(local))
    ranked.sort(key=lambda x: x[0])         # stable: the halves' order within one score stays
    return [(left, right) for _, _, _, left, right in ranked]


def spm_tokenizer_from_gguf(r):
    """A PreTrainedTokenizerFast for a GGUF with tokenizer.ggml.model == 'llama' (SentencePiece BPE)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, processors
    from transformers import PreTrainedTokenizerFast

    tokens = _field(r, "tokenizer.ggml.tokens")
    scores = _field(r, "tokenizer.ggml.scores", [0.0] * len(tokens))
    types = _field(r, "tokenizer.ggml.token_type", [1] * len(tokens))
    # normal (1), byte (6) and user-defined (4) pieces take part in merges; control (3) and unknown (2) do not
    usable = [ty in (1, 4, 6) for ty in types]

    def tok_at(key):
        i = _field(r, key)
        return tokens[i] if i is not None and 0 <= i < len(tokens) else None

    unk = tok_at("tokenizer.ggml.unknown_token_id")
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=_spm_merges(tokens, scores, usable),
                               unk_token=unk, fuse_unk=True, byte_fallback=True))
    steps = [normalizers.Replace(" ", "\u2581")]
    if _field(r, "tokenizer.ggml.add_space_prefix", False):
        steps.insert(0, normalizers.Prepend("\u2581"))
    tok.normalizer = normalizers.Sequence(steps)
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
                                    + ([decoders.Strip(" ", 1, 0)] if _field(r, "tokenizer.ggml.add_space_prefix",
                                                                               False) else []))
    # control (3) and user-defined (4) tokens are matched whole; control ones are special (skipped in decode)
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t, ty in zip(tokens, types) if ty == 4])
    specials = [t for t, ty in zip(tokens, types) if ty == 3]
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    bos, eos = tok_at("tokenizer.ggml.bos_token_id"), tok_at("tokenizer.ggml.eos_token_id")
    add_bos = bool(_field(r, "tokenizer.ggml.add_bos_token", True))
    add_eos = bool(_field(r, "tokenizer.ggml.add_eos_token", False))
    single = ([f"{bos}:0"] if add_bos and bos else []) + ["$A:0"] + ([f"{eos}:0"] if add_eos and eos else [])
    pair = single + ([f"{bos}:1"] if add_bos and bos else []) + ["$B:1"] + ([f"{eos}:1"] if add_eos and eos else [])
    ids = {t: tokens.index(t) for t in (bos, eos) if t}
    tok.post_processor = processors.TemplateProcessing(single=single, pair=pair,
                                                       special_tokens=[(t, i) for t, i in ids.items()])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, unk_token=unk,
                                   pad_token=tok_at("tokenizer.ggml.padding_token_id"),
                                   clean_up_tokenization_spaces=False)
    template = _field(r, "tokenizer.chat_template")
    if template:
        fast.chat_template = template
    return fast
