"""Text generation over an opened artifact: prompt encoding (chat template), greedy or sampled
decoding, EOS and stop strings, streaming text pieces, and timings.

The token loop is `decode_one` + the sampler; text is only decoded inside the loop when someone
listens (a stream callback) or stop strings must be matched.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

from ..compiler.errors import InputError
from .decode import decode_one, prefill
from .sampling import Sampler, SamplingConfig


@dataclass
class GenerationResult:
    text: str
    tokens: list[int]
    prompt_tokens: int
    stop_reason: str                 # "eos", "stop" (a stop string) or "length"
    ttft_s: float                    # prefill + first token
    decode_s: float                  # the decode steps after the first token
    decode_steps: int = 0            # decode_one calls made
    reused_tokens: int = 0           # prompt tokens found in the cache (chat turns), not prefilled again

    @property
    def prefill_tok_s(self) -> float:
        return self.prompt_tokens / self.ttft_s if self.ttft_s > 0 else 0.0

    @property
    def decode_tok_s(self) -> float:
        return self.decode_steps / self.decode_s if self.decode_steps and self.decode_s > 0 else 0.0

    def to_json(self) -> dict:
        return {"text": self.text, "tokens": self.tokens, "prompt_tokens": self.prompt_tokens,
                "new_tokens": len(self.tokens), "stop_reason": self.stop_reason, "ttft_s": round(self.ttft_s, 4),
                "prefill_tok_s": round(self.prefill_tok_s, 2), "decode_tok_s": round(self.decode_tok_s, 2)}


def encode_prompt(tokenizer, prompt: str, raw: bool = False) -> list[int]:
    """Token ids of the prompt: through the tokenizer's chat template when it has one (unless raw)."""
    if not raw and getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                             tokenize=False)
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return list(tokenizer(prompt)["input_ids"])


def fit_context(prompt_ids: list[int], max_new_tokens: int, context: int | None, truncate: bool = False,
                warn: Callable[[str], None] | None = None, what: str = "the model's context") -> list[int]:
    """The prompt ids checked against the positions the artifact can use (`context`: its static cache length
    or the model's trained context; None: no known limit). A prompt that leaves no room for max_new_tokens
    is refused with one line, or with truncate keeps its last tokens and warns (on stderr by default)."""
    if context is None:
        return prompt_ids
    need = len(prompt_ids) + max_new_tokens
    if need <= context:
        return prompt_ids
    if max_new_tokens >= context:
        raise InputError(f"--max-new-tokens {max_new_tokens} does not fit {what} of {context} tokens")
    if not truncate:
        raise InputError(f"the prompt ({len(prompt_ids)} tokens) + {max_new_tokens} new tokens = {need} exceed "
                         f"{what} of {context} tokens (shorten the prompt, lower --max-new-tokens, or pass "
                         "--truncate to keep the prompt's last tokens)")
    keep = context - max_new_tokens
    msg = f"accelc: warning: the prompt ({len(prompt_ids)} tokens) is cut to its last {keep} tokens to fit " \
          f"{what} of {context} with {max_new_tokens} new tokens"
    if warn is None:
        import sys
        print(msg, file=sys.stderr, flush=True)
    else:
        warn(msg)
    return prompt_ids[-keep:]


class Detokenizer:
    """Incremental decoding: text pieces as tokens arrive, holding back incomplete UTF-8 characters.
    Each piece is the difference of decoding the same start token with and without the new ones, so
    tokenizers that drop a leading space at the start of a decode stay exact."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix = 0
        self.read = 0
        self.text = ""

    def _decode(self, ids) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def add(self, token: int) -> str:
        self.ids.append(token)
        before = self._decode(self.ids[self.prefix:self.read])
        after = self._decode(self.ids[self.prefix:])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            piece = after[len(before):]
            self.prefix, self.read = self.read, len(self.ids)
            self.text += piece
            return piece
        return ""


def _find_stop(text: str, stops: Sequence[str], start: int) -> int:
    """Index of the earliest stop string in text[start:] (absolute), or -1."""
    hits = [i for i in (text.find(s, start) for s in stops) if i >= 0]
    return min(hits) if hits else -1


def generate_iter(art, prompt_ids: Sequence[int], max_new_tokens: int, sampling: SamplingConfig = SamplingConfig(),
                  stop: Sequence[str] = (), stream: bool = True, state=None, reuse: int = 0) -> Iterator[str]:
    """Yields text pieces as they are produced (when stream); returns (StopIteration.value) the GenerationResult.
    reuse: the first `reuse` prompt tokens are already in `state`'s cache (a chat's earlier turns): only the
    rest is prefilled (0: the cache is reset)."""
    if max_new_tokens < 1:
        raise InputError(f"--max-new-tokens must be >= 1, got {max_new_tokens}")
    stops = [s for s in stop if s]
    need = len(prompt_ids) + max_new_tokens
    if art.max_tokens() is not None and need > art.cache_len:
        raise InputError(f"prompt ({len(prompt_ids)} tokens) + {max_new_tokens} new tokens = {need} exceed the "
                         f"artifact's static KV cache of {art.cache_len} (compile with a larger --cache-len)")
    if state is None or state.cache.capacity < need:
        state, reuse = art.new_state(need), 0
    reuse = min(reuse, state.cache.length, len(prompt_ids) - 1)
    if reuse < getattr(state.cache, "floor", 0):      # a fixed cache cut since: its slots no longer match
        reuse = 0
    if reuse > 0:
        state.cache.rollback(reuse)
    else:
        state.cache.reset()
    sampler = Sampler(sampling)
    eos = art.eos_ids
    detok = Detokenizer(art.tokenizer) if (stream or stops) else None
    hold = max((len(s) for s in stops), default=1) - 1     # chars that could start a stop string
    emitted, scan_from, steps, reason = 0, 0, 0, "length"
    tokens: list[int] = []

    t0 = time.perf_counter()
    tok = sampler(prefill(state, prompt_ids[reuse:] if reuse else prompt_ids))
    t1 = time.perf_counter()
    while True:
        if tok in eos:
            reason = "eos"
            break
        tokens.append(tok)
        if detok is not None:
            detok.add(tok)
            text = detok.text
            if stops:
                k = _find_stop(text, stops, scan_from)
                if k >= 0:
                    if stream and k > emitted:
                        yield text[emitted:k]
                    emitted, reason = k, "stop"
                    break
                scan_from = max(0, len(text) - hold)
            safe = len(text) - hold
            if stream and safe > emitted:
                yield text[emitted:safe]
                emitted = safe
        if len(tokens) >= max_new_tokens:
            break
        tok = sampler(decode_one(state, tok))
        steps += 1
    t2 = time.perf_counter()

    if detok is not None:
        final = detok._decode(detok.ids) if reason != "stop" else detok.text[:emitted]
        if reason != "stop" and stream and len(final) > emitted:
            yield final[emitted:]
    else:
        final = art.tokenizer.decode(tokens, skip_special_tokens=True)
    return GenerationResult(text=final, tokens=tokens, prompt_tokens=len(prompt_ids), stop_reason=reason,
                            ttft_s=t1 - t0, decode_s=t2 - t1, decode_steps=steps, reused_tokens=reuse)


def generate(art, prompt_ids: Sequence[int], max_new_tokens: int, sampling: SamplingConfig = SamplingConfig(),
             stop: Sequence[str] = (), on_text: Callable[[str], None] | None = None, state=None,
             reuse: int = 0) -> GenerationResult:
    """Run generate_iter to the end, passing each text piece to on_text (if given)."""
    it = generate_iter(art, prompt_ids, max_new_tokens, sampling, stop, stream=on_text is not None, state=state,
                       reuse=reuse)
    while True:
        try:
            piece = next(it)
        except StopIteration as done:
            return done.value
        on_text(piece)
