"""A native model: mapped weights, compiled forward, its KV cache, scratch buffers and worker threads.

    m = NativeModel(config, tensors, threads)
    logits = m.step(ids, positions, past_len, last_only)     # [T, V] or [1, V] (a view), runs T tokens

The KV cache ([Hkv, capacity, D] per layer, float32) belongs to the model and grows (doubling, copying
what it holds) when a step needs more positions; rolling back is passing a smaller past_len.
Threads: threads - 1 workers wait inside native code (program.py); `step` is one ctypes call.
"""
from __future__ import annotations

import ctypes
import logging
import os
import threading
import time

import numpy as np

from ...compiler.errors import InputError
from ..heap import trim_heap
from .jit import compile_ir, host_target, load_recipe, recipe_key
from .kernels import INT_GROUP_BITS, WEIGHT_PARTS, int_isa
from .program import JOB_SHIFT, MAX_THREADS, SYNC_JOB, SYNC_STOP, SYNC_WORDS, Program, Slots
from .weights import drop_pages

log = logging.getLogger(__name__)
_UNFREED = []        # (code, buffers) of models closed while a worker thread could still be running them

ENTRY_POINTS = ["forward", "worker", "run"]
TMAX = 32                 # tokens per native call (longer inputs run in chunks)
FIRST_CAPACITY = 256
SLOW_FACTOR = 3.0         # one-token steps this much slower than the best seen: the machine is busy
WINDOW = 8                # one-token steps judged together
PROBE_EVERY = 256         # one-token steps on fewer threads before trying all threads again


def BF16_HOST(features: list[str]) -> bool:
    """CPUs where OpenVINO's CPU plugin also defaults to bf16 (AVX512-BF16, AMX)."""
    return "+avx512bf16" in features or "+amx-bf16" in features


def weight_records(cfg: dict) -> list[dict]:
    """The embedding (absent in a model fed hidden states), head and every layer's linear records."""
    return [r for r in (cfg.get("embed"), cfg["head"]) if r is not None] + \
        [L[p] for L in cfg["layers"] for p in ("q", "k", "v", "o", "gate", "up", "down")] + \
        ([cfg["mix"]["fc"]] if cfg.get("mix") else [])


def to_bf16(cfg: dict, tensors: dict[str, np.ndarray]) -> tuple[dict, dict]:
    """The precision policy for float32 weights: every f32 linear (and embedding / head) becomes bfloat16
    (round to nearest even) in memory; activations, norms, attention and the KV cache stay float32."""
    import copy
    cfg = copy.deepcopy(cfg)
    tensors = dict(tensors)
    recs = weight_records(cfg)
    done = set()
    for rec in recs:
        if rec["format"] != "f32":
            continue
        key = f"{rec['name']}.w"
        if key not in done:
            w = np.ascontiguousarray(tensors[key], dtype=np.float32).view(np.uint32)
            tensors[key] = ((w + 0x7FFF + ((w >> 16) & 1)) >> 16).astype(np.uint16)
            done.add(key)
        rec["format"] = "bf16"
    return cfg, tensors


class NativeModel:
    def __init__(self, cfg: dict, tensors: dict[str, np.ndarray], threads: int, tmax: int = TMAX,
                 precision: str = "auto", int8_act: bool | None = None, bf16: bool | None = None):
        """precision: "auto" (the policy below) or "f32" (float32 activations and weights as stored: exact);
        int8_act / bf16 override the policy's two choices (tests, benchmarks)."""
        self.threads, self.tmax = max(1, min(int(threads), MAX_THREADS)), int(tmax)
        self._keep = []                                  # arrays whose addresses are in ctx
        host = host_target()
        feats = host.features.split(",")
        auto = precision == "auto"
        fmts = {r["format"] for r in weight_records(cfg)}
        wants_int = bool(fmts & {"q8a", *INT_GROUP_BITS}) and (auto if int8_act is None else int8_act)
        self.int_isa = int_isa(feats) if wants_int else None        # vpdpbusd (VNNI) or vpmaddubsw (AVX2)
        self.int8_activations = self.int_isa is not None
        has_f32 = "f32" in fmts
        self.bf16_weights = has_f32 and ((auto and BF16_HOST(feats)) if bf16 is None else bf16)
        if self.bf16_weights:
            src = tensors
            cfg, tensors = to_bf16(cfg, tensors)
            # the float32 weights were read once, to convert them: their file pages need not stay resident
            drop_pages(src[k] for k in src if tensors[k] is not src[k])
        self.cfg = cfg
        self.precision = precision
        prog = Program(cfg, self.tmax, self.int_isa)
        # cached kernels load without LLVM (jit.load_recipe); otherwise build the IR and compile it
        recipe = recipe_key("model", cfg, self.tmax, self.int_isa)
        got = load_recipe(recipe, ENTRY_POINTS)
        if got is not None:
            self.compiled, meta = got
            self.slots = Slots(list(meta.get("slots") or []))
        if got is None or not self.slots.names:
            module = prog.build()
            self.compiled = compile_ir(str(module), ENTRY_POINTS, recipe=recipe, meta={"slots": prog.slots.names})
            self.slots = prog.slots
            del module
            trim_heap()
        self.ctx = np.zeros(len(self.slots.names), dtype=np.int64)
        self.sync = np.zeros(SYNC_WORDS, dtype=np.int64)
        self._set("sync", self.sync)
        self._set_int("nthreads", self.threads)
        self.active = self.threads                        # threads running each step (set_threads, _adapt)
        self.adaptive = self.threads > 1 and os.environ.get("ACCELC_NATIVE_ADAPT", "1").strip() != "0"
        self._best = {}                                   # active threads -> best one-token step seconds
        self._recent = []
        self._since_switch = 0
        self._weights(tensors, prog.cb_kernel)
        self._scratch()
        self.qscratch = np.zeros(prog.scratch_stride * self.threads, dtype=np.uint8)
        self._set("qscratch", self.qscratch)
        self.capacity = 0
        self._cache = []
        self._grow(FIRST_CAPACITY, 0)
        self._run = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(self.compiled.addresses["run"])
        worker = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64)(self.compiled.addresses["worker"])
        self._workers = [threading.Thread(target=worker, args=(self.ctx.ctypes.data, t), daemon=True,
                                          name=f"accelc-native-{t}") for t in range(1, self.threads)]
        for w in self._workers:
            w.start()
        missing = [n for i, n in enumerate(self.slots.names) if self.ctx[i] == 0 and n not in
                   ("T", "P", "logit_row0") and not n.endswith(":bias")]
        if missing:
            self.close()
            raise RuntimeError(f"native ctx entries never set: {missing[:5]}")

    # -- ctx ---------------------------------------------------------------------------------------
    def _set(self, name: str, arr: np.ndarray) -> None:
        if name in self.slots.names:
            self.ctx[self.slots.names.index(name)] = arr.ctypes.data
            self._keep.append(arr)

    def _set_int(self, name: str, v: int) -> None:
        self.ctx[self.slots.names.index(name)] = int(v)

    def _weights(self, t: dict[str, np.ndarray], prog_cb: str) -> None:
        cfg = self.cfg
        for rec in weight_records(cfg):
            n = rec["name"]
            fmt = rec["format"]
            if fmt != "cb":
                parts = [t[f"{n}.{part}"] for part in WEIGHT_PARTS[fmt]]
            else:   # small tables the kernel reads as f32 (codebooks transposed to M x G x 256; scales: N)
                books = np.asarray(t[f"{n}.codebooks"], dtype=np.float32)
                if prog_cb == "lut":
                    books = books.transpose(0, 2, 1)
                parts = [t[f"{n}.codes"], np.ascontiguousarray(books),
                         np.ascontiguousarray(t[f"{n}.scales"], dtype=np.float32)]
            for i, a in enumerate(parts):
                self._set(f"{n}:w{i}", a)
            if rec.get("bias"):
                self._set(f"{n}:bias", t[f"{n}.bias"])
        norms = [cfg["final_norm"]] + [r for L in cfg["layers"] for r in L["norms"].values()]
        for r in norms:
            self._set(r["weight"], t[r["weight"]])
        self.inv_freq = {name: np.asarray(t[r["inv_freq"]], dtype=np.float64) for name, r in cfg["rope"].items()}
        self.rope_scaling = {name: float(r["scaling"]) for name, r in cfg["rope"].items()}

    def _scratch(self) -> None:
        cfg, T = self.cfg, self.tmax
        C, H, Hkv, D, V = cfg["hidden"], cfg["heads"], cfg["kv_heads"], cfg["head_dim"], cfg["vocab"]
        ff = max(L["gate"]["shape"][0] for L in cfg["layers"])
        sizes = {"h": C, "xn": C, "qkv": (H + 2 * Hkv) * D, "attn": H * D, "gu": 2 * ff, "act": ff, "mlp": C,
                 "logits": V, **({"mix_in": 2 * C} if cfg.get("mix") else {})}
        self.buf = {k: np.zeros((T, n), dtype=np.float32) for k, n in sizes.items()}
        for k, a in self.buf.items():
            self._set(k, a)
        self.ids = np.zeros(T, dtype=np.int64)
        self._set("ids", self.ids)
        self.rope = {}
        for name in cfg["rope"]:
            cos, sin = np.zeros((T, D // 2), np.float32), np.zeros((T, D // 2), np.float32)
            self.rope[name] = (cos, sin)
            self._set(f"rope.{name}.cos", cos)
            self._set(f"rope.{name}.sin", sin)

    def _grow(self, need: int, keep: int) -> None:
        """Make the cache hold >= need positions, keeping the first `keep`."""
        if need <= self.capacity:
            return
        cap = max(FIRST_CAPACITY, self.capacity)
        while cap < need:
            cap *= 2
        cfg = self.cfg
        Hkv, D = cfg["kv_heads"], cfg["head_dim"]
        new = []
        for j in range(len(cfg["layers"])):
            pair = []
            for w in range(2):
                a = np.zeros((Hkv, cap, D), dtype=np.float32)
                if keep and self._cache:
                    a[:, :keep] = self._cache[j][w][:, :keep]
                pair.append(a)
            new.append(pair)
        self._keep = [a for a in self._keep if not any(a is c for p in self._cache for c in p)]
        self._cache = new
        for j, (k, v) in enumerate(new):
            self._set(f"cache.{j}.k", k)
            self._set(f"cache.{j}.v", v)
        self.scores = np.zeros((self.threads, cap), dtype=np.float32)
        self._set("scores", self.scores)
        self.capacity = cap
        self._set_int("cap", cap)

    # -- threads -----------------------------------------------------------------------------------
    def set_threads(self, n: int) -> None:
        """Run the next steps on the first n threads (1 <= n <= threads); the others wait them out."""
        self.active = max(1, min(int(n), self.threads))
        self._set_int("nthreads", self.active)

    def _adapt(self, seconds: float) -> None:
        """Lockstep threads stall when another process preempts one of them (docs/runtime/native.md, "busy
        machine"). From the timing of one-token steps: when the last WINDOW run at SLOW_FACTOR x the best seen with
        all threads (and one thread's best is not slower than that), continue on one thread; after PROBE_EVERY steps
        there, try all threads again with their best re-learned."""
        self._recent.append(seconds)
        self._since_switch += 1
        best = self._best.get(self.active)
        self._best[self.active] = seconds if best is None else min(best, seconds)
        if len(self._recent) < WINDOW:
            return
        typical = float(np.median(self._recent))
        self._recent = []
        if self.active == self.threads:
            alone = self._best.get(1)
            if typical > SLOW_FACTOR * self._best[self.threads] and (alone is None or alone < typical):
                self.set_threads(1)
                self._since_switch = 0
        elif self._since_switch >= PROBE_EVERY:
            self.set_threads(self.threads)
            self._best.pop(self.threads, None)            # re-learn what all threads do now
            self._since_switch = 0

    # -- running -----------------------------------------------------------------------------------
    def step(self, ids: np.ndarray, positions: np.ndarray, past_len: int, last_only: bool,
             hidden: np.ndarray | None = None, x: np.ndarray | None = None) -> np.ndarray:
        """Run tokens ids [T] at rope positions [T] after past_len cached positions -> logits [T, V] (or the
        last row [1, V] with last_only). The result is a view, valid until the next step. hidden: a [T, C]
        float32 array that receives each token's residual stream after the last layer (before the final norm:
        the EAGLE drafter's feature). x: the input rows of a model fed hidden states (model.json "input":
        "hidden"): [T, C] states, or [T, 2C] rows that its "mix" fc maps to states (an EAGLE drafter); its ids are
        then only counted."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        positions = np.asarray(positions, dtype=np.int64).reshape(-1)
        T = ids.shape[0]
        V = self.cfg["vocab"]
        if T == 0:
            raise InputError("empty input")
        if ids.min() < 0 or ids.max() >= V:
            raise InputError(f"token id {int(ids.max() if ids.max() >= V else ids.min())} is outside the vocabulary "
                             f"(0..{V - 1})")
        fed = self.cfg.get("input", "ids") == "hidden"
        width = self.cfg["hidden"] * (2 if self.cfg.get("mix") else 1)
        if fed != (x is not None) or (fed and np.shape(x) != (T, width)):
            raise InputError(f"this native model takes {f'[T, {width}] input rows' if fed else 'token ids'}")
        self._grow(past_len + T, past_len)
        rows = []
        for s in range(0, T, self.tmax):
            n = min(self.tmax, T - s)
            last = s + n == T
            self.ids[:n] = ids[s:s + n]
            for name, (cos, sin) in self.rope.items():
                ang = positions[s:s + n, None].astype(np.float64) * self.inv_freq[name][None]
                sc = self.rope_scaling[name]
                cos[:n] = np.cos(ang) * sc
                sin[:n] = np.sin(ang) * sc
            self._set_int("T", n)
            self._set_int("P", past_len + s)
            row0 = (n - 1 if last else n) if last_only else 0
            self._set_int("logit_row0", row0)
            if fed:
                self.buf["mix_in" if self.cfg.get("mix") else "h"][:n] = x[s:s + n]
            if self.adaptive and T == 1:
                t0 = time.perf_counter()
                self._run(self.ctx.ctypes.data)
                self._adapt(time.perf_counter() - t0)
            else:
                self._run(self.ctx.ctypes.data)
            if hidden is not None:
                hidden[s:s + n] = self.buf["h"][:n]
            if not last_only:
                rows.append(self.buf["logits"][:n].copy() if not last or s else self.buf["logits"][:n])
        if last_only:
            return self.buf["logits"][:1]
        return rows[0] if len(rows) == 1 else np.concatenate(rows)

    def cache_view(self, layer: int, past_len: int):
        """(keys, values) [Hkv, past_len, D] views of one layer's cache."""
        k, v = self._cache[layer]
        return k[:, :past_len], v[:, :past_len]

    def load_cache(self, past: list[np.ndarray]) -> None:
        """Copy an explicit cache (key.0, value.0, ... each [1, P, Hkv, D]) into this model's cache."""
        P = past[0].shape[1] if past else 0
        self._grow(max(P, 1), 0)
        for j in range(len(self._cache)):
            for w in range(2):
                self._cache[j][w][:, :P] = np.transpose(past[2 * j + w][0], (1, 0, 2))

    def close(self) -> None:
        """Stop the worker threads. A worker that does not stop in time keeps this model's code and buffers
        alive for the rest of the process (freeing them under a running thread would crash it)."""
        if getattr(self, "_workers", None):
            self.sync[SYNC_STOP] = 1
            self.sync[SYNC_JOB] += 1 << JOB_SHIFT
            me = threading.current_thread()
            stuck = []
            for w in self._workers:
                if w is not me:
                    w.join(timeout=30)
                    if w.is_alive():
                        stuck.append(w)
            if stuck or me in self._workers:
                _UNFREED.append((self.compiled, self.ctx, self._keep, self._cache))
                if stuck:
                    log.warning("native: %d worker thread(s) did not stop; their model stays in memory", len(stuck))
            self._workers = []

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
