"""A multi-turn chat over an opened artifact: the tokenizer's chat template, the history, and the KV cache
kept between turns.

    chat = ChatSession(art, max_new_tokens=256)
    result = chat.say("Hello", on_text=print_piece)     # streams the reply; result.reused_tokens > 0 from turn 2

Each turn renders the whole conversation with the chat template, keeps the longest prefix of it that the
cache already holds (the earlier turns, as far as the template renders them the same way again) and
prefills only the rest. When the conversation no longer fits the context, the oldest exchanges are dropped
(the system message stays) and the cache is rebuilt.
"""
from __future__ import annotations

from typing import Callable

from ..compiler.errors import InputError
from .generate import GenerationResult, generate
from .sampling import SamplingConfig

DEFAULT_CAPACITY = 2048


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class ChatSession:
    def __init__(self, art, max_new_tokens: int = 256, sampling: SamplingConfig = SamplingConfig(),
                 system: str | None = None, context: int | None = None, stop=()):
        if not getattr(art.tokenizer, "chat_template", None):
            raise InputError("this artifact's tokenizer has no chat template: use `accelc run` instead of chat")
        self.art, self.max_new_tokens, self.sampling, self.stop = art, max_new_tokens, sampling, list(stop)
        self.context = context or art.max_tokens()
        self.system = system
        self.messages: list[dict] = []
        self.held: list[int] = []           # the tokens the cache holds, in order
        self.state = None

    def reset(self) -> None:
        self.messages, self.held = [], []

    def _render(self, messages: list[dict]) -> list[int]:
        tok = self.art.tokenizer
        full = ([{"role": "system", "content": self.system}] if self.system else []) + messages
        text = tok.apply_chat_template(full, add_generation_prompt=True, tokenize=False)
        return list(tok(text, add_special_tokens=False)["input_ids"])

    def _fit(self, messages: list[dict]) -> tuple[list[dict], list[int]]:
        """Drop the oldest exchanges until the conversation + a reply fits the context."""
        ids = self._render(messages)
        while self.context and len(ids) + self.max_new_tokens > self.context and len(messages) > 1:
            messages = messages[2:] if len(messages) > 2 else messages[1:]
            ids = self._render(messages)
        if self.context and len(ids) + self.max_new_tokens > self.context:
            raise InputError(f"the message ({len(ids)} tokens) + {self.max_new_tokens} new tokens do not fit the "
                             f"context of {self.context} tokens")
        return messages, ids

    def _state_for(self, need: int):
        if self.state is None or self.state.cache.capacity < need:
            cap = max(need, DEFAULT_CAPACITY)
            if self.context:
                cap = min(max(cap, need), self.context)
            self.state, self.held = self.art.new_state(cap), []
        return self.state

    def say(self, text: str, on_text: Callable[[str], None] | None = None) -> GenerationResult:
        messages, ids = self._fit(self.messages + [{"role": "user", "content": text}])
        state = self._state_for(len(ids) + self.max_new_tokens)
        reuse = common_prefix(self.held, ids)
        result = generate(self.art, ids, self.max_new_tokens, self.sampling, self.stop, on_text=on_text,
                          state=state, reuse=reuse)
        self.held = (ids + result.tokens)[:state.cache.length]
        self.messages = messages + [{"role": "assistant", "content": result.text}]
        return result
