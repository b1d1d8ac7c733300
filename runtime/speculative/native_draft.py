"""The EAGLE drafter on the native backend: its layer and head run as a native model beside the decoder.

The compiler writes native/eagle_draft.{json,safetensors} (passes/drafting/export_eagle.py describe_eagle): the
drafter's one layer, the target's final norm and the kept head rows as a native model fed hidden states
(model.json "input": "hidden", the artifact's linear format) with the input mix's fc as its first linear, and the
mix's two norms. Per call:

    rows = [rms(embed(token t+1)) * w_e ; rms(f_t) * w_h]            (numpy, elementwise: two norms)
    logits [T, S], hidden_out [T, C] = native fc [C, 2C], layer, final norm and head on the rows

The embedding rows are the target's own native embedding (decoded per row from its stored format), so the drafter
stores no second copy. The model runs on one thread by default: the decoder's workers wait out a draft step
spinning, then sleeping, on the other cores, and the drafter is small (a layer and S head rows). It keeps its own
KV cache: the past length comes from the attention mask, so a rollback is the next call's shorter past
(`stateful`, runtime/speculative/steps.py).
"""
from __future__ import annotations

import numpy as np

from ...compiler.errors import ArtifactError

THREADS = 1


def embed_rows(rec: dict, tensors: dict, ids: np.ndarray) -> np.ndarray:
    """Rows `ids` of a native embedding record (f32, f16 or q8a) as float32 [T, C]."""
    n = rec["name"]
    if rec["format"] in ("f32", "f16"):
        return tensors[f"{n}.w"][ids].astype(np.float32)
    if rec["format"] == "q8a":
        q, scale, zero = tensors[f"{n}.q"][ids], tensors[f"{n}.scale"][ids], tensors[f"{n}.zero"][ids]
        return (q.astype(np.float32) - zero[:, None]) * scale[:, None]
    raise ArtifactError(f"native embedding format {rec['format']} has no row decoder")


def _rms(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return w * (x / np.sqrt((x * x).mean(axis=-1, keepdims=True) + np.float32(eps)))


class NativeDraftFn:
    """The eagle_draft graph function (steps.GraphFn, stateful) over the native drafter of an artifact.
    last_only (default): the head runs on the last input row only and the logits output is that row [1, 1, S]
    (the proposer feeds the pairs since its last draft and reads the last row; the head is half a row's work);
    False: every row (validation compares them all)."""

    stateful = True
    last_only = True

    def __init__(self, cfg: dict, tensors: dict, target_cfg: dict, target_tensors: dict, threads: int = THREADS,
                 precision: str = "auto"):
        from ..native.config_check import check_config
        from ..native.model import NativeModel
        check_config(cfg, tensors)
        mix = cfg.get("mix")
        C = cfg["hidden"]
        try:
            self.norms = [(np.asarray(tensors[mix[k]["weight"]], dtype=np.float32), float(mix[k]["eps"]))
                          for k in ("norm_embed", "norm_hidden")]
        except (KeyError, TypeError) as e:
            raise ArtifactError(f"native/eagle_draft.json: the input mix is incomplete ({e})") from None
        if any(w.shape != (C,) for w, _ in self.norms):
            raise ArtifactError("native/eagle_draft.json: the input mix does not match the hidden size")
        if target_cfg.get("hidden") != C or target_cfg.get("embed") is None:
            raise ArtifactError("native/eagle_draft.json does not match the artifact's native decoder")
        self.embed_rec, self.embed_tensors = target_cfg["embed"], target_tensors
        self.embed_scale = target_cfg.get("embed_scale")
        self.hidden_size = C
        self.model = NativeModel(cfg, tensors, threads, precision=precision)

    def mix(self, ids: np.ndarray, states: np.ndarray) -> np.ndarray:
        """The rows [T, 2C] the native model's fc maps to the layer's input, for tokens ids [T] and the states
        [T, C] before them (elementwise numpy only: a BLAS call here would wake BLAS threads that spin on the
        cores the decoder's lockstep workers need, and the next target step then stalls many times over)."""
        e = embed_rows(self.embed_rec, self.embed_tensors, ids)
        if self.embed_scale is not None:
            e *= np.float32(self.embed_scale)
        (we, ee), (wh, eh) = self.norms
        return np.concatenate([_rms(e, we, ee), _rms(np.asarray(states, dtype=np.float32), wh, eh)],
                              axis=1).astype(np.float32, copy=False)

    def __call__(self, inputs, position_ids, attention_mask, past):
        ids, states = inputs
        T = ids.shape[1]
        past_len = int(np.asarray(attention_mask).shape[1]) - T
        out = np.empty((T, self.hidden_size), dtype=np.float32)
        logits = self.model.step(np.zeros(T, dtype=np.int64), np.asarray(position_ids)[0], past_len, self.last_only,
                                 hidden=out, x=self.mix(np.asarray(ids)[0], states[0]))
        return (logits[None], out[None]), None

    def close(self) -> None:
        self.model.close()


def open_native_draft(folder, record: dict, target, threads: int = THREADS) -> NativeDraftFn:
    """The native drafter named by the manifest's records.native.eagle_draft, beside the native decoder
    backend `target` (its embedding rows and precision choice)."""
    from ..backends.native import read_native
    cfg, tensors = read_native(folder, record, "native drafter")
    return NativeDraftFn(cfg, tensors, target.cfg, target.tensors, threads,
                         precision=target.model.precision)
