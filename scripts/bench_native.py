"""The native backend against accelc's OpenVINO backend, openvino-genai and llama.cpp: greedy decode speed
(128 new tokens), resident memory, the fraction of the machine's bandwidth roofline, and the kernel
compile / load cost.

Every (engine, artifact) measurement runs in a fresh process (so resident memory is that engine's own);
rounds alternate the engines (the order rotates every round) and the figure is the median over rounds.

    .venv/bin/python scripts/bench_native.py fp32=out/s-fp32 int8=out/s-int8 int4=out/s-int4 pv=out/s-pv \
        --gguf f16=/path/smollm2-f16.gguf --gguf q8_0=... --rounds 3 --threads 2 --out docs/results/native_DATE.json

Engines: native (accelc --backend native, its default precision policy), native-f32 (--precision f32, for
fp32 artifacts), openvino (accelc --backend openvino: f32 inference), genai (openvino_genai.LLMPipeline on
ARTIFACT/openvino at its defaults: bf16 inference on bf16 CPUs, prefix caching off), and llama.cpp
(llama-bench tg128 on each --gguf file, when ACCELC_LLAMA_CPP names a build's bin folder). Resident memory: ours
after decoding (rss_mb) and at peak (peak_rss_mb, VmHWM: getrusage's ru_maxrss would carry this parent's
high-water mark through fork and exec); llama.cpp's at peak only (peak_rss_mb, the llama-bench process's
own, its VmHWM sampled while it runs: bench_llama.run_child), so compare llama.cpp with our peak column.
Bandwidth: a native read kernel streaming 576 MB on `threads` threads, measured in every round; an engine's
roofline is bandwidth / bytes of weights it reads per token. Writes raw JSON with machine, date, commit and
command line.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from provenance import ROOT, provenance

PROBE = r"""
import json, os, sys, time
engine, art, threads, new = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
rss = lambda: int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) / 1024
PROMPT = "Write a short story about a robot who learns to paint. Once upon a time"
out = {}
t0 = time.perf_counter()
if engine in ("native", "native-f32", "openvino", "onnxruntime"):
    import accelc
    from accelc.runtime.generate import encode_prompt
    backend = engine if engine in ("openvino", "onnxruntime") else "native"
    m = accelc.load(art, backend=backend, threads=threads, precision="f32" if engine != "native" else None)
    out["load_s"] = time.perf_counter() - t0
    a = m.artifact
    if backend == "native":
        nm = a.runners["decoder"].model
        out.update(compile_s=nm.compiled.seconds, kernel_cache_hit=nm.compiled.cached,
                   llvm_loaded="llvmlite.binding" in sys.modules,
                   int8_activations=nm.int8_activations, int_isa=nm.int_isa, bf16_weights=nm.bf16_weights, isa=nm.compiled.target.isa)
    from accelc.runtime.decode import decode_one, prefill
    ids = encode_prompt(a.tokenizer, PROMPT, raw=True)
    def run(n):                                                # greedy, exactly n new tokens (no EOS stop)
        st = a.new_state(len(ids) + n + 1)
        t = time.perf_counter(); logits = prefill(st, ids); ttft = time.perf_counter() - t
        tok = int(logits.argmax()); t = time.perf_counter()
        for _ in range(n - 1):
            tok = int(decode_one(st, tok).argmax())
        return ttft, (n - 1) / (time.perf_counter() - t)
    run(16)                                                    # warm-up
    ttft, tps = run(new)
    out.update(decode_tok_s=tps, new_tokens=new, prompt_tokens=len(ids), ttft_s=ttft)
else:
    import numpy as np, openvino as ov, openvino_genai as og
    sched = og.SchedulerConfig(); sched.enable_prefix_caching = False
    pipe = og.LLMPipeline(os.path.join(art, "openvino"), "CPU", scheduler_config=sched, INFERENCE_NUM_THREADS=threads)
    out["load_s"] = time.perf_counter() - t0
    tok = og.Tokenizer(os.path.join(art, "openvino"))
    ids = tok.encode(PROMPT).input_ids.data
    cfg = og.GenerationConfig(); cfg.max_new_tokens = new; cfg.min_new_tokens = new; cfg.do_sample = False
    x = og.TokenizedInputs(ov.Tensor(np.array(ids)), ov.Tensor(np.ones_like(np.array(ids))))
    pipe.generate(x, cfg)
    pm = pipe.generate(x, cfg).perf_metrics
    out.update(decode_tok_s=1000.0 / pm.get_tpot().mean, new_tokens=int(pm.get_num_generated_tokens()),
               ttft_s=pm.get_ttft().mean / 1000)
hwm = int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) / 1024   # this process's own peak
out.update(rss_mb=rss(), peak_rss_mb=hwm)
print("RESULT " + json.dumps(out))
"""

BANDWIDTH = r"""
import json, sys, time, ctypes, threading, numpy as np, llvmlite.ir as ir
from accelc.runtime.native import kernels
from accelc.runtime.native.jit import compile_ir
threads = int(sys.argv[1]); N, K = 1 << 18, 576     # 576 MB of f32 rows, streamed once per call (rows 4 KB apart
# measured 4x slower on Zen 4 than 2304-byte rows: the probe uses SmolLM2's row width)
m = ir.Module("bw"); fn = kernels.linear(m, "f32", N, K, False); fn.linkage = "external"
c = compile_ir(str(m), [fn.name])
f = ctypes.CFUNCTYPE(None, *([ctypes.c_void_p] * 6 + [ctypes.c_int64] * 5))(c.addresses[fn.name])
W = np.ones((N, K), np.float32); x = np.ones((1, K), np.float32); y = np.zeros((1, N), np.float32)
def part(i):
    f(W.ctypes.data, None, None, None, x.ctypes.data, y.ctypes.data, 1, i * N // threads, (i + 1) * N // threads, K, N)
best = 0
for _ in range(5):
    t = time.perf_counter()
    ts = [threading.Thread(target=part, args=(i,)) for i in range(threads)]
    [a.start() for a in ts]; [a.join() for a in ts]
    best = max(best, W.nbytes / (time.perf_counter() - t) / 1e9)
print("RESULT " + json.dumps({"read_gb_s": best}))
"""


def _probe(code: str, *args, env: dict | None = None) -> dict:
    r = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, cwd=ROOT,
                       env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})
    line = next((ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if r.returncode or line is None:
        return {"error": (r.stderr or r.stdout)[-800:]}
    return json.loads(line[7:])


def _llama_bench(gguf: Path, threads: int, new: int) -> dict:
    bindir = os.environ.get("ACCELC_LLAMA_CPP")
    exe = Path(bindir) / "llama-bench" if bindir else None
    if not exe or not exe.exists():
        return {"error": "no llama.cpp build (set ACCELC_LLAMA_CPP to its bin folder)"}
    from accelc.compiler.harness.bench_llama import run_child
    rc, stdout, stderr, peak = run_child([str(exe), "-m", str(gguf), "-t", str(threads), "-p", "0", "-n", str(new),
                                          "-r", "1", "-o", "json"])
    if rc:
        return {"error": stderr[-500:]}
    rec = json.loads(stdout)[0]
    return {"decode_tok_s": rec["avg_ts"], "file_mb": gguf.stat().st_size / 2**20, "peak_rss_mb": peak}


def _mb(x) -> str:
    return f"{x:.0f}" if x else ""


def weight_bytes(art: Path) -> dict:
    """Bytes of weights each engine reads per decoded token: native (its tensors, embedding rows excluded unless
    the head is tied), and the OpenVINO IR's weights (embedding included: its Gather reads one row, but an
    untied head is a second matrix)."""
    m = json.loads((art / "manifest.json").read_text())
    rec = (m.get("records") or {}).get("native") or {}
    cfg = json.loads((art / rec["config"]).read_text()) if rec else None
    out = {}
    if cfg:
        from accelc.runtime.native.weights import map_safetensors
        t = map_safetensors(art / rec["weights"])
        total = sum(a.nbytes for k, a in t.items())
        embed = sum(a.nbytes for k, a in t.items() if k.startswith("embed."))
        out["native"] = total - (0 if cfg["tied"] else embed)
        out["native_fp32_to_bf16"] = out["native"] // 2 if cfg["layers"][0]["q"]["format"] == "f32" else out["native"]
    g = m.get("graphs", {}).get("decoder", {})
    binf = g.get("openvino_bin") or (g.get("openvino", "")[:-4] + ".bin" if g.get("openvino") else None)
    if binf and (art / binf).exists():
        out["openvino"] = (art / binf).stat().st_size
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifacts", nargs="+", help="NAME=ARTIFACT_DIR")
    ap.add_argument("--gguf", action="append", default=[], help="NAME=FILE.gguf for llama.cpp")
    ap.add_argument("--engines", default="native,openvino,genai")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--doc", type=Path, help="rewrite the table after the marker in this markdown file")
    ap.add_argument("--marker", default="native-table", help="the doc's marker: <!-- NAME --> (default native-table);"
                    " the table replaces what follows it up to the next marker or the end")
    ap.add_argument("--from-json", type=Path, help="only render --doc from an earlier --out file")
    args = ap.parse_args()
    if args.from_json:
        render(json.loads(args.from_json.read_text()), args.doc, args.from_json, args.marker)
        return
    arts = dict(a.split("=", 1) for a in args.artifacts)
    ggufs = dict(g.split("=", 1) for g in args.gguf)
    engines = args.engines.split(",")
    jobs = [(e, n) for n in arts for e in engines] + [("llama.cpp", n) for n in ggufs]
    if any(e == "native" and "fp32" in n for e, n in jobs):
        jobs += [("native-f32", n) for n in arts if "fp32" in n]
    runs: dict[str, list] = {f"{e}:{n}": [] for e, n in jobs}
    cold = {}
    if "native" in engines:                   # kernel compilation with an empty kernel cache, once per artifact
        import tempfile
        for n in arts:
            with tempfile.TemporaryDirectory() as tmp:
                r = _probe(PROBE, "native", arts[n], args.threads, 16, env={"ACCELC_CACHE": tmp})
                cold[n] = {k: r.get(k) for k in ("compile_s", "load_s", "kernel_cache_hit", "error")}
        for e, n in jobs:                     # fill the real kernel cache first: every measured run is a cached one
            if e.startswith("native"):
                _probe(PROBE, e, arts[n], args.threads, 16)
    bw = []
    for r in range(args.rounds):
        bw.append(_probe(BANDWIDTH, args.threads).get("read_gb_s"))
        order = jobs[r % len(jobs):] + jobs[:r % len(jobs)]
        for e, n in order:
            res = _llama_bench(Path(ggufs[n]), args.threads, args.new) if e == "llama.cpp" else \
                _probe(PROBE, e, arts[n], args.threads, args.new)
            runs[f"{e}:{n}"].append(res)
            print(f"round {r + 1} {e:10s} {n:8s} " + (f"{res['decode_tok_s']:.1f} tok/s" if "decode_tok_s" in res
                                                        else res.get("error", "")[-200:]), flush=True)
    bandwidth = statistics.median([b for b in bw if b])
    rows = []
    for key, rs in runs.items():
        e, n = key.split(":", 1)
        ok = [x for x in rs if "decode_tok_s" in x]
        row = {"engine": e, "model": n, "runs": rs}
        if ok:
            row["decode_tok_s"] = statistics.median(x["decode_tok_s"] for x in ok)
            for k in ("rss_mb", "peak_rss_mb", "load_s", "compile_s", "file_mb"):
                if k in ok[0]:
                    row[k] = statistics.median(x[k] for x in ok)
            if "llvm_loaded" in ok[0]:
                row["llvm_loaded"] = any(x.get("llvm_loaded") for x in ok if x.get("kernel_cache_hit"))
            if e != "llama.cpp":
                wb = weight_bytes(Path(arts[n]))
                per_tok = (wb.get("native_fp32_to_bf16") if e == "native" else wb.get("native")) \
                    if e.startswith("native") else wb.get("openvino")
                if e == "genai" and per_tok and "fp32" in n:
                    per_tok //= 2                 # genai runs fp32 IR weights as bf16 on bf16 CPUs
            else:
                per_tok = ok[0]["file_mb"] * 2**20
            if per_tok:
                row["weight_mb_per_token"] = per_tok / 2**20
                row["roofline_tok_s"] = bandwidth * 1e9 / per_tok
                row["roofline_fraction"] = row["decode_tok_s"] / row["roofline_tok_s"]
        rows.append(row)
    out = {"provenance": provenance(), "threads": args.threads, "new_tokens": args.new, "rounds": args.rounds,
           "read_bandwidth_gb_s": bandwidth, "bandwidth_runs": bw, "rows": rows, "native_cold_compile": cold}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    for row in rows:
        print(f"{row['engine']:10s} {row['model']:8s} {row.get('decode_tok_s', 0):7.1f} tok/s  "
              f"rss {row.get('rss_mb', 0):7.1f} MB  roofline {row.get('roofline_fraction', 0):.2f}")
    if args.doc:
        render(out, args.doc, args.out, args.marker)


def render(out: dict, doc: Path, src: Path, marker: str = "native-table") -> None:
    """The measurement table (and the native load costs) in markdown, after the doc's marker."""
    rows = [r for r in out["rows"] if "decode_tok_s" in r]
    by = {(r["engine"], r["model"]): r for r in rows}
    p = out["provenance"]
    m = p.get("machine", {})
    lines = [f"Measured {p.get('date', '')[:10]} on {m.get('cpu')} ({m.get('cores')} cores, "
             f"{', '.join(m.get('isa', []))}), {out['threads']} threads, greedy, {out['new_tokens']} new tokens, "
             f"median of {out['rounds']} alternating rounds, each run in a fresh process; read bandwidth "
             f"{out['read_bandwidth_gb_s']:.1f} GB/s (native streaming kernel, same run). Raw: `{src}`.", "",
             "| model | engine | decode tok/s | vs genai | vs accelc openvino | resident MB | peak MB | "
             "weights MB/token | roofline |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        g, o = by.get(("genai", r["model"])), by.get(("openvino", r["model"]))
        ratio = lambda ref: f"{r['decode_tok_s'] / ref['decode_tok_s']:.2f}x" if ref and ref is not r else ""
        lines.append(f"| {r['model']} | {r['engine']} | {r['decode_tok_s']:.1f} | {ratio(g)} | {ratio(o)} | "
                     f"{_mb(r.get('rss_mb'))} | {_mb(r.get('peak_rss_mb'))} | {r.get('weight_mb_per_token', 0):.0f} | "
                     f"{r.get('roofline_fraction', 0):.2f} |")
    nat = [r for r in rows if r["engine"].startswith("native")]
    if nat:
        cold = out.get("native_cold_compile", {})
        llvm = any("llvm_loaded" in r for r in nat)      # recorded since 2026-12-05 (cached loads without LLVM)
        lines += ["", "| model | engine | load s (cached kernels) | kernel load s (cached) | kernel compile s (cold cache) |"
                  + (" LLVM loaded (cached run) |" if llvm else ""), "| --- | --- | --- | --- | --- |" + (" --- |" if llvm else "")]
        for r in nat:
            c = cold.get(r["model"], {})
            lines.append(f"| {r['model']} | {r['engine']} | {r.get('load_s', 0):.2f} | {r.get('compile_s', 0):.2f} | "
                         f"{c.get('compile_s') or 0:.2f} |" + (f" {'yes' if r.get('llvm_loaded') else 'no'} |" if llvm else ""))
    text = doc.read_text()
    marker = f"<!-- {marker} -->"
    if marker not in text:
        raise SystemExit(f"{doc} has no {marker}")
    head, _, tail = text.partition(marker)
    nxt = tail.find("\n<!-- ")
    rest = tail[nxt:] if nxt >= 0 else ""
    doc.write_text(head + marker + "\n\n" + "\n".join(lines) + "\n" + rest)


if __name__ == "__main__":
    main()
