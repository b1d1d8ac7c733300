"""Encoder-decoder artifacts against their decoder-only source (issue 18): prefix-conditioned perplexity, time to
first token, decode speed, artifact and resident size.

    .venv/bin/python scripts/bench_encdec.py --artifacts source=out/ed/source bal=out/ed/balanced \
        dec10=out/ed/dec10 --out docs/passes/results/encdec_DATE.json

Speed: for each prompt length (--prompts, default 256 and 1024 tokens of the evaluation text) and each repeat, every
artifact in turn (alternating, so all see the same machine state) runs in a fresh process on --backend (default
openvino, CPU, --threads): open, prefill the prompt and produce the first token (TTFT), then --decode greedy tokens
(tokens/s), then record VmRSS and its peak. Each artifact runs as it would for a user: a decoder-only artifact's
OpenVINO graph is stateful, an encoder-decoder's decoder takes its cache explicitly (the encoder writes it).
Quality: `accelc eval ARTIFACT --prefix P` (compiler/harness/prefix_eval.py) at each --prefix on Brown's evaluation
split and on the second text (State of the Union addresses, `--text sotu`). Size: every file of the artifact and
those of the graph format the backend runs. Raw JSON with machine, date, commit and command line.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from provenance import add_row, provenance


def child(art_path: str, prompt: int, decode: int, threads: int, backend: str, tokens: str) -> dict:
    import numpy as np
    from accelc.compiler.memory import process_peak_mb, rss_mb
    from accelc.runtime.artifact import open_artifact
    from accelc.runtime.decode import decode_one, prefill
    art = open_artifact(art_path, backend=backend, threads=threads, report=False)
    ids = np.load(tokens)[:prompt]
    state = art.new_state(prompt + decode + 1)
    t0 = time.perf_counter()
    tok = int(np.argmax(prefill(state, ids)))
    t1 = time.perf_counter()
    for _ in range(decode):
        tok = int(np.argmax(decode_one(state, tok)))
    t2 = time.perf_counter()
    return {"ttft_s": round(t1 - t0, 4), "decode_tok_s": round(decode / (t2 - t1), 2),
            "rss_mb": round(rss_mb() or 0.0, 1), "peak_rss_mb": round(process_peak_mb(), 1),
            "kind": "encoder-decoder" if art.encoder is not None else "decoder-only"}


def sizes(path: Path, backend: str) -> dict:
    man = json.loads((path / "manifest.json").read_text())
    total = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    key = "openvino" if backend == "openvino" else "onnx"
    graph = 0
    for rec in man["graphs"].values():
        rel = rec.get(key)
        if rel:
            for f in (path / rel, path / (rel[:-4] + ".bin" if key == "openvino" else rel + ".data")):
                graph += f.stat().st_size if f.is_file() else 0
    return {"artifact_mb": round(total / 1e6, 1), f"{key}_graphs_mb": round(graph / 1e6, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--artifacts", nargs="+", metavar="LABEL=DIR")
    ap.add_argument("--prompts", type=int, nargs="+", default=[256, 1024])
    ap.add_argument("--prefix", type=int, nargs="+", default=[256, 512])
    ap.add_argument("--texts", nargs="+", default=["brown-eval", "sotu"])
    ap.add_argument("--decode", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--backend", default="openvino")
    ap.add_argument("--max-tokens", type=int, default=32768, help="quality: tokens of text per evaluation (windows of "
                    "P + 128, at most 64)")
    ap.add_argument("--skip-quality", action="store_true")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--child", nargs=3, metavar=("ARTIFACT", "PROMPT", "TOKENS"), help=argparse.SUPPRESS)
    ap.add_argument("--out")
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.child[0], int(a.child[1]), a.decode, a.threads, a.backend, a.child[2])))
        return 0
    if not a.out or not a.artifacts:
        ap.error("--artifacts and --out are required")
    import tempfile
    import numpy as np
    from accelc.models.corpus import load_text
    from accelc.runtime.artifact import read_artifact
    arts = dict(x.split("=", 1) for x in a.artifacts)
    result = {**provenance(), "decode": a.decode, "threads": a.threads, "backend": a.backend, "repeats": a.repeats,
              "prompt_text": "brown-eval", "rows": []}
    tmp = Path(tempfile.mkdtemp(prefix="encdec-bench-"))
    ids = read_artifact(next(iter(arts.values()))).tokenizer(load_text("eval"), add_special_tokens=False)["input_ids"]
    tokens = tmp / "ids.npy"
    np.save(tokens, np.asarray(ids, dtype=np.int64))
    speed: dict = {}
    for n in ([] if a.skip_speed else a.prompts):
        for r in range(a.repeats):
            for label, art in arts.items():
                cmd = [sys.executable, __file__, "--child", art, str(n), str(tokens), "--decode", str(a.decode),
                       "--threads", str(a.threads), "--backend", a.backend]
                p = subprocess.run(cmd, capture_output=True, text=True)
                if p.returncode != 0:
                    raise SystemExit(f"{label} prompt {n}: {p.stderr.strip().splitlines()[-1:]}")
                speed.setdefault((label, n), []).append(json.loads(p.stdout.strip().splitlines()[-1]))
    for label, art in arts.items():
        man = json.loads((Path(art) / "manifest.json").read_text())
        rec = (man.get("records") or {}).get("encdec") or {}
        recovery = ((man.get("records") or {}).get("pruning") or {}).get("recovery")
        row = {"label": label, "artifact": art, **sizes(Path(art), a.backend),
               "convert": (man.get("options") or {}).get("convert"),
               "weights": (man.get("options") or {}).get("weights"),
               "decoder_layers": (man.get("model") or {}).get("layers"), "encoder_layers": rec.get("encoder_layers"),
               "adaptation": rec.get("adaptation"),
               "recovery": {k: recovery.get(k) for k in ("steps", "seconds")} if recovery else None,
               "encoder": rec.get("encoder"), "gates": rec.get("gates"),
               "speed": {}, "quality": {}}
        for n in ([] if a.skip_speed else a.prompts):
            runs = speed[(label, n)]
            row["speed"][str(n)] = {"ttft_s": statistics.median(x["ttft_s"] for x in runs),
                                    "decode_tok_s": statistics.median(x["decode_tok_s"] for x in runs),
                                    "rss_mb": max(x["rss_mb"] for x in runs),
                                    "peak_rss_mb": max(x["peak_rss_mb"] for x in runs), "runs": runs}
        if not a.skip_quality:
            from accelc.compiler.harness.prefix_eval import evaluate_prefix
            for text in a.texts:
                for P in a.prefix:
                    q = evaluate_prefix(art, P, text=text, max_tokens=a.max_tokens, backend=a.backend)
                    row["quality"][f"{text}@{P}"] = {k: q[k] for k in ("perplexity", "windows", "tokens")}
        add_row(result, row, a.out)
    base = next(iter(arts))
    for row in result["rows"]:       # ratios to the first artifact (the source), measured in this run
        for n, s in row["speed"].items():
            b = result["rows"][0]["speed"][n]
            s["decode_vs_" + base] = round(s["decode_tok_s"] / b["decode_tok_s"], 3)
            s["ttft_vs_" + base] = round(s["ttft_s"] / b["ttft_s"], 3)
    Path(a.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
