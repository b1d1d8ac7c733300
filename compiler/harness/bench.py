"""Benchmark protocol for `accelc bench`: fixed prompts, TTFT, prefill and decode tok/s, peak RSS,
and the weight-streaming roofline (weight bytes read per token / measured read bandwidth)."""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# fixed prompts (raw text, no chat template: every engine gets the same token ids)
PROMPTS = [
    "The history of the printing press",
    "Explain in simple words why the sky is blue during the day and red at sunset.",
    "Write a short story about a lighthouse keeper who finds a message in a bottle. The story should have a "
    "surprising ending and be suitable for children.",
    "Summarise the following paragraph. The Brown University Standard Corpus of Present-Day American English "
    "was compiled in the 1960s by Henry Kucera and W. Nelson Francis. It contains about one million words of "
    "running text drawn from five hundred samples of prose printed in the United States in 1961, across "
    "fifteen categories such as press reportage, religion, learned writing and fiction.",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
]


@dataclass
class EngineResult:
    name: str
    runs: list = field(default_factory=list)       # Timing per prompt
    peak_rss_mb: float = 0.0
    load_s: float = 0.0
    extra: dict = field(default_factory=dict)      # what the engine adds about itself (llama.cpp: its file)

    def summary(self) -> dict:
        ttft = [r.ttft_s for r in self.runs]
        dec_s = sum(r.decode_s for r in self.runs)
        steps = sum(r.decode_steps for r in self.runs)
        return {"engine": self.name, "prompts": len(self.runs), "ttft_ms": round(1000 * float(np.mean(ttft)), 1),
                "prefill_tok_s": round(sum(r.prompt_tokens for r in self.runs) / sum(ttft), 1) if sum(ttft) else 0.0,
                "decode_tok_s": round(steps / dec_s, 2) if dec_s > 0 else 0.0,
                "new_tokens": sum(r.new_tokens for r in self.runs),
                "peak_rss_mb": round(self.peak_rss_mb, 1), "load_s": round(self.load_s, 2), **self.extra}


class PeakRSS:
    """Samples this process's RSS every 20 ms while active (context manager); .peak in MB."""

    def __init__(self):
        import psutil
        self.proc = psutil.Process()
        self.peak = 0.0
        self._stop = threading.Event()

    def _loop(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss / 2**20)
            self._stop.wait(0.02)

    def __enter__(self):
        self._t = threading.Thread(target=self._loop, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self.proc.memory_info().rss / 2**20)


def read_bandwidth(threads: int, mbytes: int = 512, repeats: int = 5) -> float:
    """Bytes/s of summing a large float64 array split over `threads` threads (numpy releases the GIL)."""
    a = np.ones(mbytes * 2**20 // 8)
    parts = np.array_split(a, threads)
    best = float("inf")
    with ThreadPoolExecutor(threads) as ex:
        list(ex.map(np.sum, parts))                # touch the pages once
        for _ in range(repeats):
            t = time.perf_counter()
            list(ex.map(np.sum, parts))
            best = min(best, time.perf_counter() - t)
    return a.nbytes / best


# bytes per weight of the embedding table in the exported graphs (int4 exports keep embeddings at int8)
EMBED_BYTES = {"fp32": 4, "fp16": 2, "int8": 1, "int4": 1}


def weight_bytes_per_token(path: Path, manifest: dict) -> int:
    """Bytes of weights a decode step reads: the decode graph's weight file minus the embedding table
    (a token reads one row of it; the head's matrix, tied or not, is read whole and stays counted)."""
    graphs = manifest.get("graphs") or {}
    g = graphs.get("decode") or graphs.get("decoder") or next(iter(graphs.values()), {})
    files = manifest.get("files") or {}
    total = 0
    ov_bin = g.get("openvino_bin") or (str(Path(g["openvino"]).with_suffix(".bin")) if g.get("openvino") else None)
    if ov_bin in files:
        total = int(files[ov_bin]["bytes"])
    elif g.get("onnx"):
        total = int(sum(f["bytes"] for rel, f in files.items() if rel in (g["onnx"], g["onnx"] + ".data")))
    model = manifest.get("model") or {}
    weights = str((manifest.get("options") or {}).get("weights", "fp32"))
    embed = int(model.get("vocab", 0)) * int(model.get("hidden", 0)) * EMBED_BYTES.get(weights, 4)
    return total - embed if total > 2 * embed else total


def run_engine(factory, name: str, prompts_ids: list[list[int]], max_new_tokens: int, tick) -> EngineResult:
    """Load an engine (timed, RSS sampled), warm it up once, then run every prompt. An engine that runs in
    another process reports its own peak_rss_mb (and any `info` it has about itself)."""
    res = EngineResult(name)
    with PeakRSS() as rss:
        t = time.perf_counter()
        engine = factory()
        res.load_s = time.perf_counter() - t
        res.name = getattr(engine, "name", name)
        engine.run(prompts_ids[0], 8)              # warm-up (compilation, first-call allocations)
        for ids in prompts_ids:
            res.runs.append(engine.run(ids, max_new_tokens))
            tick()
        res.extra = dict(getattr(engine, "info", {}))
        own_rss = getattr(engine, "peak_rss_mb", None)
        del engine
    res.peak_rss_mb = rss.peak if own_rss is None else own_rss
    return res
