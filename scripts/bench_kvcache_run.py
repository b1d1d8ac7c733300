"""Resident memory and decode speed against context length for artifacts with different KV caches (issue 17): a
fixed cache should stay flat, a full one grows.

    .venv/bin/python scripts/bench_kvcache_run.py --artifacts out/kv/full out/kv/lococo128 \
        --contexts 1024 2048 4096 8192 --decode 64 --out docs/runtime/results/kvcache_run_DATE.json

For each context N, each artifact in turn (alternating, so both see the same machine state) runs in a fresh
process: open the artifact (its default backend), prefill N tokens of the evaluation text (Brown eval), then
decode --decode tokens greedily. Recorded: the process's resident memory (VmRSS) after decoding, its peak
(ru_maxrss), prefill time, and decode tokens/s. Passkey accuracy (--passkey T) uses `accelc eval --context N
--passkey T` (compiler/harness/context_eval.py) in the same child process. Writes raw JSON with machine, date,
commit and command line.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from provenance import add_row, provenance


def memory() -> tuple[float, float]:
    """(RSS now, the process's peak RSS) in MiB (accelc.compiler.memory: VmRSS, ru_maxrss)."""
    from accelc.compiler.memory import process_peak_mb, rss_mb
    return round(rss_mb() or 0.0, 1), round(process_peak_mb(), 1)


def child(art_path: str, context: int, decode: int, threads: int, passkey: int, tokens: str) -> dict:
    import numpy as np
    from accelc.runtime.artifact import open_artifact
    from accelc.runtime.decode import decode_one, prefill
    art = open_artifact(art_path, threads=threads, report=False)
    ids = np.load(tokens)[:context]       # the evaluation text's ids, tokenized by the parent (no torch here)
    if ids.shape[0] < context:
        raise SystemExit(f"the evaluation text has only {ids.shape[0]} tokens")
    state = art.new_state(context + decode + 1)
    t0 = time.perf_counter()
    logits = prefill(state, ids)
    t1 = time.perf_counter()
    tok = int(np.argmax(logits))
    for _ in range(decode):
        tok = int(np.argmax(decode_one(state, tok)))
    t2 = time.perf_counter()
    rss, hwm = memory()
    row = {"artifact": art_path, "cache": str(art.kv_cache) if art.kv_cache is not None else "full",
           "backend": art.choice.backend, "context": context, "prefill_s": round(t1 - t0, 3),
           "decode_tok_s": round(decode / (t2 - t1), 2), "rss_mb": rss, "peak_rss_mb": hwm}
    row["torch_loaded"] = "torch" in sys.modules
    if passkey:
        from accelc.compiler.harness.context_eval import passkey_accuracy, passkey_prompts
        from accelc.runtime.generate import generate
        row["passkey"] = passkey_accuracy(lambda p: generate(art, p, 8).text,
                                          passkey_prompts(art.tokenizer, context, passkey))
    return row


def child_genai(folder: str, budget: int, context: int, decode: int, threads: int, passkey: int, tokens: str) -> dict:
    """openvino-genai's own cache eviction at the same budget: LLMPipeline with a SchedulerConfig using
    CacheEvictionConfig(start_size=32, recent_size=32, max_cache_size=budget, SUM) (sizes in its 32-token blocks);
    budget 0: no eviction (its full cache)."""
    import numpy as np
    import openvino as ov
    import openvino_genai as og
    sc = og.SchedulerConfig()
    sc.cache_size = 2
    if budget:
        sc.use_cache_eviction = True
        sc.cache_eviction_config = og.CacheEvictionConfig(32, 32, budget, og.AggregationMode.SUM)
    pipe = og.LLMPipeline(folder, "CPU", scheduler_config=sc, INFERENCE_PRECISION_HINT="f32",
                          KV_CACHE_PRECISION="f32", INFERENCE_NUM_THREADS=threads)
    ids = np.load(tokens)[:context]
    cfg = og.GenerationConfig()
    cfg.max_new_tokens, cfg.min_new_tokens, cfg.do_sample = decode + 1, decode + 1, False
    inputs = og.TokenizedInputs(ov.Tensor(ids[None]), ov.Tensor(np.ones((1, ids.shape[0]), np.int64)))
    res = pipe.generate(inputs, cfg)
    pm = res.perf_metrics
    rss, hwm = memory()
    row = {"artifact": folder, "cache": f"genai-evict:{budget}" if budget else "genai-full", "backend": "openvino-genai",
           "context": context, "prefill_s": round(pm.get_ttft().mean / 1000, 3),
           "decode_tok_s": round(1000 / pm.get_tpot().mean, 2), "rss_mb": rss, "peak_rss_mb": hwm}
    if passkey:
        from accelc.compiler.harness.context_eval import passkey_accuracy, passkey_prompts
        from accelc.runtime.artifact import read_artifact
        tok = read_artifact(str(Path(folder).parent)).tokenizer
        g = og.GenerationConfig()
        g.max_new_tokens, g.do_sample = 8, False

        def gen(p):
            t = og.TokenizedInputs(ov.Tensor(np.array([p], np.int64)), ov.Tensor(np.ones((1, len(p)), np.int64)))
            return tok.decode(list(pipe.generate(t, g).tokens[0]), skip_special_tokens=True)
        row["passkey"] = passkey_accuracy(gen, passkey_prompts(tok, context, passkey))
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--artifacts", nargs="+")
    ap.add_argument("--contexts", type=int, nargs="+", default=[1024, 2048, 4096, 8192])
    ap.add_argument("--decode", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--passkey", type=int, default=0, help="passkey trials per artifact and context")
    ap.add_argument("--genai", help="an artifact with the genai folder (openvino/): also run openvino-genai's own "
                    "cache eviction at each --genai-budgets (0: its full cache)")
    ap.add_argument("--genai-budgets", type=int, nargs="*", default=[0, 128, 256, 512])
    ap.add_argument("--child-genai", nargs=4, help=argparse.SUPPRESS)
    ap.add_argument("--child", nargs=3, metavar=("ARTIFACT", "CONTEXT", "TOKENS"), help=argparse.SUPPRESS)
    ap.add_argument("--rounds", type=int, default=1,
                    help="repeat every row this many times, odd rounds with the contexts and artifacts in reverse order "
                         "(the machine's speed drifts over minutes: medians over rounds; passkey in round 0 only)")
    ap.add_argument("--out")
    a = ap.parse_args()
    if a.child_genai:
        f, b, n, t = a.child_genai
        print(json.dumps(child_genai(f, int(b), int(n), a.decode, a.threads, a.passkey, t)))
        return 0
    if a.child:
        print(json.dumps(child(a.child[0], int(a.child[1]), a.decode, a.threads, a.passkey, a.child[2])))
        return 0
    if not a.out or not a.artifacts:
        ap.error("--artifacts and --out are required")
    import tempfile
    import numpy as np
    from accelc.models.corpus import load_text
    from accelc.runtime.artifact import read_artifact
    result = {**provenance(), "decode": a.decode, "threads": a.threads, "text": "brown-eval", "rows": []}
    tmp = Path(tempfile.mkdtemp(prefix="kvrun-"))
    files = {}
    runs = [(art, ["--child", art]) for art in a.artifacts]
    if a.genai:
        runs += [(a.genai, ["--child-genai", str(Path(a.genai) / "openvino"), str(b)]) for b in a.genai_budgets]
    for art in dict.fromkeys(r[0] for r in runs):
        ids = read_artifact(art).tokenizer(load_text("eval"), add_special_tokens=False)["input_ids"]
        files[art] = tmp / f"{len(files)}.npy"
        np.save(files[art], np.asarray(ids, dtype=np.int64))
    result["rounds"] = a.rounds
    for r in range(a.rounds):
        flip = (lambda xs: xs[::-1]) if r % 2 else (lambda xs: xs)      # noqa: E731
        for n in flip(a.contexts):
            for art, head in flip(runs):
                cmd = [sys.executable, __file__, *head, str(n), str(files[art]), "--decode", str(a.decode),
                       "--threads", str(a.threads), "--passkey", str(a.passkey if r == 0 else 0)]
                p = subprocess.run(cmd, capture_output=True, text=True)
                if p.returncode != 0:
                    row = {"artifact": art, "context": n, "error": p.stderr.strip().splitlines()[-1:]}
                else:
                    row = json.loads(p.stdout.strip().splitlines()[-1])
                add_row(result, {**row, "round": r}, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
