"""Test-only: run an exported graph file directly (a raw ONNX Runtime / OpenVINO session and a batched explicit
cache), to check the graph contract itself at batch sizes and chunkings the runtime does not use. The product runs
graphs through the runtime only (runtime/graph_set.py, runtime/decode.py)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class GraphCache:
    keys: np.ndarray      # [L, B, Pmax, H, D] float32
    values: np.ndarray    # [L, B, Pmax, H, D] float32
    mask: np.ndarray      # [B, Pmax] int64: 1 where a slot holds a token to attend
    first_layer: int = 0  # absolute index of the graph's first layer (names past_key.{first_layer + l})
    length: int = 0       # slots [0, length) are written

    @classmethod
    def allocate(cls, num_layers: int, batch: int, max_len: int, kv_heads: int, head_dim: int,
                 first_layer: int = 0) -> "GraphCache":
        shape = (num_layers, batch, max_len, kv_heads, head_dim)
        return cls(np.zeros(shape, np.float32), np.zeros(shape, np.float32), np.zeros((batch, max_len), np.int64),
                   first_layer)

    def feeds(self, input_ids: np.ndarray, position_ids: np.ndarray, new_mask: np.ndarray | None = None,
              static: bool = False, input_name: str = "input_ids") -> dict[str, np.ndarray]:
        """Inputs for one call: input_ids [B,T], position_ids [B,T], new_mask [B,T] (1 = a real token).

        static=False feeds the written prefix (P = length); static=True feeds the whole buffer (P = Pmax).
        """
        B, T = input_ids.shape[:2]
        if new_mask is None:
            new_mask = np.ones((B, T), np.int64)
        P = self.keys.shape[2] if static else self.length
        feeds = {input_name: input_ids, "position_ids": position_ids.astype(np.int64),
                 "attention_mask": np.concatenate((self.mask[:, :P], new_mask.astype(np.int64)), axis=1)}
        for l in range(self.keys.shape[0]):
            feeds[f"past_key.{self.first_layer + l}"] = self.keys[l, :, :P]
            feeds[f"past_value.{self.first_layer + l}"] = self.values[l, :, :P]
        return feeds

    def append(self, outputs: dict[str, np.ndarray], n: int, new_mask: np.ndarray | None = None) -> None:
        """Write the first n new keys/values (of the graph's T) at [length, length + n)."""
        end = self.length + n
        if end > self.keys.shape[2]:
            raise ValueError(f"cache full: {end} > {self.keys.shape[2]} slots")
        for l in range(self.keys.shape[0]):
            i = self.first_layer + l
            self.keys[l, :, self.length:end] = outputs[f"new_key.{i}"][:, :n]
            self.values[l, :, self.length:end] = outputs[f"new_value.{i}"][:, :n]
        self.mask[:, self.length:end] = 1 if new_mask is None else new_mask[:, :n]
        self.length = end


def run_chunk(run, cache: GraphCache, tokens: np.ndarray, chunk: int | None = None, static: bool = False,
              ) -> np.ndarray:
    """Feed tokens [B,N] through `run(feeds) -> {name: array}` and return logits [B,N,V].

    chunk: the graph's fixed T (static graphs): the last chunk is right-padded with masked tokens.
    """
    B, N = tokens.shape
    out = []
    step = chunk or N
    for s in range(0, N, step):
        piece = tokens[:, s:s + step]
        n = piece.shape[1]
        pos = np.broadcast_to(np.arange(cache.length, cache.length + (chunk or n), dtype=np.int64), (B, chunk or n))
        mask = np.zeros((B, chunk or n), np.int64)
        mask[:, :n] = 1
        if chunk and n < chunk:
            piece = np.concatenate((piece, np.zeros((B, chunk - n), piece.dtype)), axis=1)
        res = run(cache.feeds(piece, pos, mask, static=static))
        cache.append(res, n)
        out.append(res["logits"][:, :n])
    return np.concatenate(out, axis=1)


def make_runner(backend: str, path: str, weights: str | None = None):
    """A function feeds -> {output name: array} for one graph file on the CPU, in f32 (weights: an OpenVINO IR's
    .bin when it is not beside the .xml, the graph record's `openvino_bin`)."""
    if backend == "onnxruntime":
        import onnxruntime as ort
        so = ort.SessionOptions()
        so.log_severity_level = 3
        sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        names = [o.name for o in sess.get_outputs()]
        return lambda feeds: dict(zip(names, sess.run(names, feeds)))
    import openvino as ov
    core = ov.Core()
    model = core.read_model(path, weights) if weights else core.read_model(path)
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    req = compiled.create_infer_request()
    names = [o.get_any_name() for o in compiled.outputs]

    def run(feeds):
        res = req.infer(feeds)
        return {n: res[compiled.output(n)] for n in names}
    return run
