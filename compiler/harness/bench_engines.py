"""The engines `accelc bench --against` compares with, each behind one small interface:

    engine.run(prompt_ids, max_new_tokens) -> Timing(ttft_s, prompt_tokens, new_tokens, decode_s, decode_steps)

- accelc:          this runtime on the artifact (runtime/generate.py)
- transformers:    plain `generate`, torch fp32 eager, on the artifact's source model
- optimum-intel:   OVModelForCausalLM on an IR exported by optimum-intel at the artifact's weight precision
- openvino-genai:  LLMPipeline on that same IR, prefix caching off
- llama.cpp:       llama-bench on the source model as GGUF files (bench_llama.py; only when a build is found;
                   the same thread count and prompt lengths, but its own token ids and defaults: f16 KV cache)

All get the same token ids, greedy decoding, the same thread count, f32 inference precision and an
f32 KV cache. The optimum-intel IR is exported once per (source, precision) into
accelc.models.sources.cache_dir()/bench-ir/.
"""
from __future__ import annotations

import gc
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError

# our weight precision -> optimum-cli export arguments giving the same precision
OPTIMUM_WEIGHTS = {
    "fp32": ["--weight-format", "fp32"],
    "fp16": ["--weight-format", "fp16"],
    "int8": ["--weight-format", "int8"],
    "int4": ["--weight-format", "int4", "--sym", "--group-size", "64"],
}


@dataclass
class Timing:
    ttft_s: float
    prompt_tokens: int
    new_tokens: int
    decode_s: float
    decode_steps: int

    @property
    def decode_tok_s(self) -> float:
        return self.decode_steps / self.decode_s if self.decode_s > 0 and self.decode_steps else 0.0

    @property
    def prefill_tok_s(self) -> float:
        return self.prompt_tokens / self.ttft_s if self.ttft_s > 0 else 0.0


def ov_cpu_config(threads: int) -> dict:
    return {"INFERENCE_NUM_THREADS": int(threads), "INFERENCE_PRECISION_HINT": "f32", "KV_CACHE_PRECISION": "f32",
            "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}


class AccelcEngine:
    name = "accelc"

    def __init__(self, path, threads: int, backend: str | None = None, device: str | None = None):
        from ...runtime.artifact import open_artifact
        self.art = open_artifact(path, backend=backend, device=device, threads=threads)
        self.name = f"accelc ({self.art.choice.backend}/{self.art.choice.device})"

    def run(self, ids: list[int], n: int) -> Timing:
        from ...runtime.generate import generate
        eos = self.art.eos_ids
        self.art.eos_ids = frozenset()            # benchmarks generate exactly n tokens
        try:
            r = generate(self.art, ids, n)
        finally:
            self.art.eos_ids = eos
        return Timing(r.ttft_s, len(ids), len(r.tokens), r.decode_s, r.decode_steps)


class TransformersEngine:
    name = "transformers (torch fp32 eager)"

    def __init__(self, source_spec: str, threads: int):
        import torch
        from ...models.sources import load_model
        torch.set_num_threads(threads)
        self.torch = torch
        self.model = load_model(source_spec).model

    def run(self, ids: list[int], n: int) -> Timing:
        from transformers.generation.streamers import BaseStreamer
        stamps: list[float] = []

        class Clock(BaseStreamer):
            def put(self, value):
                stamps.append(time.perf_counter())

            def end(self):
                pass

        x = self.torch.tensor([ids])
        t0 = time.perf_counter()
        with self.torch.inference_mode():
            out = self.model.generate(x, attention_mask=self.torch.ones_like(x), max_new_tokens=n, min_new_tokens=n,
                                      do_sample=False, streamer=Clock(), pad_token_id=0)
        t_end = time.perf_counter()
        new = out.shape[1] - len(ids)
        first = stamps[1]                      # stamps[0] is the prompt
        return Timing(first - t0, len(ids), new, t_end - first, new - 1)


def optimum_ir(source_path: str, weights: str, threads: int) -> Path:
    """The optimum-intel IR (with openvino-tokenizers files) of the source at this precision, exported once."""
    from ...models.sources import cache_dir
    if weights not in OPTIMUM_WEIGHTS:
        raise InputError(f"no optimum-intel export for weights '{weights}'")
    out = cache_dir() / "bench-ir" / f"{Path(source_path).name}-{weights}"
    if (out / "openvino_model.xml").is_file() and (out / "openvino_tokenizer.xml").is_file():
        return out
    cli = shutil.which("optimum-cli") or str(Path(sys.executable).with_name("optimum-cli"))
    if not Path(cli).exists():
        raise InputError("--against needs optimum-intel (pip install 'accelc[compare]')")
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    cmd = [cli, "export", "openvino", "--model", source_path, "--task", "text-generation-with-past",
           *OPTIMUM_WEIGHTS[weights], str(tmp)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(threads)}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0 or not (tmp / "openvino_model.xml").is_file():
        raise InputError(f"optimum-cli export failed: {(r.stderr or r.stdout).strip()[-300:]}")
    (tmp / "accelc_bench.json").write_text(json.dumps({"cmd": cmd[1:]}))
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


class OptimumEngine:
    name = "optimum-intel OVModelForCausalLM"

    def __init__(self, ir: Path, threads: int):
        import torch
        from optimum.intel import OVModelForCausalLM
        self.torch = torch
        self.model = OVModelForCausalLM.from_pretrained(str(ir), export=False, ov_config=ov_cpu_config(threads),
                                                        compile=True)

    def run(self, ids: list[int], n: int) -> Timing:
        return TransformersEngine.run(self, ids, n)


class GenAIEngine:
    name = "openvino-genai LLMPipeline"

    def __init__(self, ir: Path, threads: int):
        import openvino_genai as ov_genai
        self.g = ov_genai
        sched = ov_genai.SchedulerConfig()
        sched.enable_prefix_caching = False     # a repeated prompt must not skip its prefill
        self.pipe = ov_genai.LLMPipeline(str(ir), "CPU", scheduler_config=sched, **ov_cpu_config(threads))

    def run(self, ids: list[int], n: int) -> Timing:
        import numpy as np
        import openvino as ov
        cfg = self.g.GenerationConfig()
        cfg.max_new_tokens = n
        cfg.min_new_tokens = n
        cfg.do_sample = False
        x = np.array([ids], dtype=np.int64)
        inputs = self.g.TokenizedInputs(ov.Tensor(x), ov.Tensor(np.ones_like(x)))
        res = self.pipe.generate(inputs, cfg)
        pm = res.perf_metrics
        new = int(pm.get_num_generated_tokens())
        ttft = pm.get_ttft().mean / 1000
        tpot = pm.get_tpot().mean / 1000        # mean time per output token after the first
        return Timing(ttft, len(ids), new, tpot * (new - 1), new - 1)


def release(engine) -> None:
    del engine
    gc.collect()
