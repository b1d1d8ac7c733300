"""Preallocated KV-cache buffers, updated in place (gpt-fast style).

One buffer pair per layer, position-major: key/value [1, capacity, H, D] float32. The graphs take
the cache as `past_key.{i}` / `past_value.{i}` of shape [1, P, H, D]; for B=1 the prefix
buf[:, :P] is contiguous, so a dynamic graph gets it without a copy. A static graph always gets the
whole buffer (P = capacity) and an attention mask that marks the valid slots.
Rolling back (after speculative verification) only sets the length.

With allocate=False the cache is bookkeeping only (length, capacity, rollback): the OpenVINO backend's
stateful graphs keep the keys and values in the infer request's states (backends/openvino.py) and
`advance(n)` records the n positions the graph appended there.
"""
from __future__ import annotations

import numpy as np

from ..compiler.errors import InputError


class KVCache:
    def __init__(self, layers: int, capacity: int, kv_heads: int, head_dim: int, dtype=np.float32,
                 allocate: bool = True):
        if layers < 1 or capacity < 1:
            raise ValueError(f"bad cache geometry: layers={layers}, capacity={capacity}")
        self.capacity = capacity
        self._layers = layers
        # flat list in graph input order: key.0, value.0, key.1, value.1, ...
        self.buffers = ([np.zeros((1, capacity, kv_heads, head_dim), dtype=dtype) for _ in range(2 * layers)]
                        if allocate else [])
        self.length = 0
        self.floor = 0          # an encoder's memory ends here: rolling back below it starts over (encoder.py)

    @property
    def layers(self) -> int:
        return self._layers

    def advance(self, n: int) -> None:
        """Record n positions appended elsewhere (a stateful graph's own cache)."""
        self.check_room(n)
        self.length += n

    def views(self, length: int | None = None) -> list[np.ndarray]:
        """[1, length, H, D] prefixes of every buffer (no copy); length defaults to the filled length."""
        n = self.length if length is None else length
        return [b[:, :n] for b in self.buffers]

    def full(self) -> list[np.ndarray]:
        """The whole buffers [1, capacity, H, D] (static graphs)."""
        return self.buffers

    def check_room(self, n: int) -> None:
        if self.length + n > self.capacity:
            raise InputError(f"the KV cache holds {self.capacity} tokens: {self.length} used + {n} new do not fit "
                             "(shorten the prompt or --max-new-tokens, or compile with a larger --cache-len)")

    def append(self, new_kv: list[np.ndarray], n: int | None = None) -> None:
        """Write the first n rows of each new_kv[j] [1, T, H, D] at [length, length+n) and advance."""
        if len(new_kv) != len(self.buffers):
            raise ValueError(f"expected {len(self.buffers)} new key/value tensors, got {len(new_kv)}")
        n = new_kv[0].shape[1] if n is None else n
        self.check_room(n)
        a, b = self.length, self.length + n
        for buf, new in zip(self.buffers, new_kv):
            buf[:, a:b] = new[:, :n]
        self.length = b

    def rollback(self, length: int) -> None:
        """Forget everything after `length` tokens (the stale rows stay but are never read or are masked)."""
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot roll back to {length} (cache holds {self.length})")
        self.length = length

    def reset(self) -> None:
        self.length = self.floor = 0


def static_mask(mask: np.ndarray, capacity: int, length: int, n_new: int) -> np.ndarray:
    """Fill `mask` [1, capacity + width] for a static graph's call: cache slots [0, length) and the first n_new of
    its width new tokens are visible. -> mask."""
    mask[0, :length] = 1
    mask[0, length:capacity] = 0
    mask[0, capacity:capacity + n_new] = 1
    mask[0, capacity + n_new:] = 0
    return mask
