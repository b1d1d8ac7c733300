"""`accelc bench DIR`: TTFT, prefill and decode speed, peak memory, the bandwidth roofline; with
--against, plain transformers, optimum-intel, openvino-genai and llama.cpp on the same prompts and threads."""
from __future__ import annotations

import json
from pathlib import Path

from .errors import InputError
from .progress import bar, status

AGAINST = ("transformers", "optimum-intel", "openvino-genai", "llama.cpp")


def add_parser(sub):
    p = sub.add_parser("bench", help="measure an artifact's speed (optionally against other engines)",
                       description="Run a fixed set of prompts (greedy, fixed length) and report time to first "
                                   "token, prefill and decode tokens/s, peak RSS and the weight-streaming roofline.")
    p.add_argument("artifact", help="artifact directory")
    p.add_argument("--against", nargs="?", const="all", metavar="ENGINES",
                   help="also run other engines on the same prompts and threads: all of them (given alone) or a comma "
                        "list of transformers (torch fp32 eager), optimum-intel (OVModelForCausalLM) and openvino-genai "
                        "(LLMPipeline), both at the artifact's weight precision, and llama.cpp (llama-bench on the "
                        "source model as GGUF files, when a build is found: ACCELC_LLAMA_CPP or PATH)")
    p.add_argument("--llama-types", default="source,F16,Q8_0,Q4_0,Q2_K", metavar="LIST",
                   help="llama.cpp rows: 'source' (the source GGUF as it is) and llama-quantize types "
                        "(default source,F16,Q8_0,Q4_0,Q2_K)")
    p.add_argument("--prompts", type=int, default=5, help="how many of the fixed prompts to run (1-5, default 5)")
    p.add_argument("--max-new-tokens", type=int, default=128, help="tokens generated per prompt (default 128)")
    p.add_argument("--threads", type=int, help="threads for every engine (default: all available cores)")
    p.add_argument("--backend", choices=["native", "openvino", "onnxruntime", "torch"], help="accelc backend")
    p.add_argument("--device", choices=["npu", "cuda", "cpu"], help="accelc device")
    p.add_argument("--plot", metavar="FILE", help="write a PNG bar chart of decode tok/s (needs matplotlib)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..runtime.backends import default_threads
    from .harness.bench import PROMPTS, read_bandwidth, run_engine, weight_bytes_per_token
    from .harness.bench_engines import (AccelcEngine, GenAIEngine, OptimumEngine, TransformersEngine, optimum_ir)
    from .harness.bench_llama import find_llama_cpp, llama_factories, parse_types
    from .artifact import verify

    if not 1 <= args.prompts <= len(PROMPTS):
        raise InputError(f"--prompts must be between 1 and {len(PROMPTS)}")
    if args.max_new_tokens < 2:
        raise InputError("--max-new-tokens must be >= 2")
    if args.threads is not None and args.threads < 1:
        raise InputError("--threads must be >= 1")
    against = _against(args.against)
    llama_types = parse_types(args.llama_types)
    llama = find_llama_cpp() if "llama.cpp" in against else None     # a wrong ACCELC_LLAMA_CPP fails here, early
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise InputError("--plot needs matplotlib, which is not installed (pip install matplotlib)") from None
    path = Path(args.artifact)
    manifest = verify(path, full=False)
    threads = args.threads or default_threads()
    weights = str(manifest.get("options", {}).get("weights", "fp32"))
    src = manifest.get("source", {})
    src_spec = src.get("name") if src.get("format") == "packaged-gguf" else src.get("path")
    src_path = src.get("path")

    ours = AccelcEngine(path, threads, args.backend, args.device)
    prompts = [list(ours.art.tokenizer(p)["input_ids"]) for p in PROMPTS[:args.prompts]]
    factories = [("accelc", lambda: ours)]
    if against & {"transformers", "optimum-intel", "openvino-genai"}:
        if not src_path or not Path(src_path).is_dir():
            raise InputError(f"--against needs the artifact's source model folder ({src_path}) on this machine")
        if "transformers" in against:
            factories.append(("transformers", lambda: TransformersEngine(src_spec, threads)))
        if against & {"optimum-intel", "openvino-genai"}:
            status(f"optimum-intel IR at {weights} (exported once, cached) ...")
            ir = optimum_ir(src_path, weights, threads)
            if "optimum-intel" in against:
                factories.append(("optimum-intel", lambda: OptimumEngine(ir, threads)))
            if "openvino-genai" in against:
                factories.append(("openvino-genai", lambda: GenAIEngine(ir, threads)))
    if "llama.cpp" in against:
        factories += llama_factories(llama, src, llama_types, threads, status)
    results = []
    with bar(len(factories) * len(prompts), "bench") as pb:
        for name, factory in factories:
            pb.set_description_str(name)
            results.append(run_engine(factory, name, prompts, args.max_new_tokens, lambda: pb.update(1)))
            if name == "accelc":
                del ours
    bw = read_bandwidth(threads)
    wbytes = weight_bytes_per_token(path, manifest)
    roof = bw / wbytes if wbytes else 0.0
    rows = [r.summary() for r in results]
    base = rows[0]["decode_tok_s"]
    for r in rows:
        row_roof = bw / r["weight_bytes_per_token"] if r.get("weight_bytes_per_token") else roof   # llama.cpp: its file
        r["roofline_fraction"] = round(r["decode_tok_s"] / row_roof, 3) if row_roof else None
        r["accelc_decode_ratio"] = round(base / r["decode_tok_s"], 3) if r["decode_tok_s"] else None
    out = {"artifact": str(path), "weights": weights, "threads": threads, "max_new_tokens": args.max_new_tokens,
           "prompt_tokens": [len(p) for p in prompts], "read_bandwidth_gb_s": round(bw / 1e9, 2),
           "weight_bytes_per_token": wbytes, "roofline_decode_tok_s": round(roof, 1), "engines": rows}
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        print(f"{path}  weights {weights}, {threads} threads, {len(prompts)} prompts "
              f"({', '.join(str(len(p)) for p in prompts)} tokens), {args.max_new_tokens} new tokens each")
        print(f"{'engine':<40} {'TTFT ms':>8} {'prefill/s':>10} {'decode/s':>9} {'peak RSS':>9} "
              f"{'of roof':>8} {'accelc x':>9}")
        for r in rows:
            print(f"{r['engine']:<40} {r['ttft_ms']:>8.1f} {r['prefill_tok_s']:>10.1f} {r['decode_tok_s']:>9.2f} "
                  f"{r['peak_rss_mb']:>7.0f}MB {100 * (r['roofline_fraction'] or 0):>7.1f}% "
                  f"{r['accelc_decode_ratio'] or 0:>8.2f}x")
        print(f"roofline: {wbytes / 1e6:.1f} MB of weights read per token / {bw / 1e9:.1f} GB/s read bandwidth "
              f"({threads} threads, numpy sum) = {roof:.1f} tok/s")
        if any(r.get("weight_bytes_per_token") for r in rows):
            print("llama.cpp rows: 'of roof' against their own file's weight bytes per token")
    if args.plot:
        _plot(rows, roof, args.plot)
    return 0


def _against(value: str | None) -> set[str]:
    if value is None:
        return set()
    if value == "all":
        return set(AGAINST)
    names = {n.strip() for n in value.split(",") if n.strip()}
    bad = sorted(names - set(AGAINST))
    if not names or bad:
        raise InputError(f"--against takes 'all' or a comma list of {', '.join(AGAINST)}, not '{value}'")
    return names


def _plot(rows: list[dict], roof: float, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 3 + 0.4 * len(rows)))
    ax.barh([r["engine"] for r in rows], [r["decode_tok_s"] for r in rows])
    if roof:
        ax.axvline(roof, linestyle="--", color="gray", label=f"roofline {roof:.0f} tok/s")
        ax.legend()
    ax.set_xlabel("decode tokens/s")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    status(f"wrote {path}")
