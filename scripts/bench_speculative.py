"""Benchmark: our autoregressive decode vs our speculative decode (fixed k, adaptive), with the fused
self-speculative drafter, and openvino-genai's speculative decoding with a comparable draft (the target
truncated to its first L layers, exported with optimum-intel).

    .venv/bin/python scripts/bench_speculative.py --engine openvino --layers 8 --steps 200 --prompts 5 --genai
    .venv/bin/python scripts/bench_speculative.py --engine torch --steps 1 --windows 2 --prompts 1 --max-new 8  # smoke
    .venv/bin/python scripts/bench_speculative.py --artifact out/smollm2-fused --prompts 5 --genai  # artifact graphs

Greedy decoding; every speculative run is checked token-for-token against our autoregressive run.
Prints one JSON object (and writes it to --json FILE if given).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from provenance import emit  # machine, date, commit, command line (scripts/provenance.py)


def graph_fns(bundle, drafter, engine: str, threads: int, workdir: Path):
    """-> {"full", "trunk", "head", "tail"}: (graph function, DecoderGraph) on the chosen engine."""
    from accelc.passes.export.decoder_graph import DecoderGraph
    from accelc.runtime.speculative.steps import torch_graph_fn
    graphs = {"full": DecoderGraph(bundle.model, bundle.adapter).eval(),
              "trunk": drafter.trunk_graph(bundle.model, bundle.adapter), "head": drafter.head_graph(),
              "tail": drafter.tail_graph(bundle.model, bundle.adapter)}
    if engine == "torch":
        torch.set_num_threads(threads)
        return {k: (torch_graph_fn(g), g) for k, g in graphs.items()}
    from accelc.passes.export.export_onnx import export_graph
    from accelc.runtime.speculative.openvino import openvino_graph_fn
    out = {}
    for name, g in graphs.items():
        path = workdir / f"{name}.onnx"
        export_graph(g, path, ("batch", "new", "past"))
        out[name] = (openvino_graph_fn(path, g.input_names(), g.output_names(), threads), g)
    return out


def make_steps(fns, bundle, drafter, capacity: int):
    from accelc.runtime.speculative.steps import GraphStep, cache_for, fused_steps
    cache = {k: cache_for(g, capacity, fn) for k, (fn, g) in fns.items()}    # stateful fns: bookkeeping only
    plain = GraphStep(fns["full"][0], cache["full"])
    target, draft = fused_steps(*((fns[k][0], cache[k]) for k in ("trunk", "head", "tail")),
                                bundle.adapter.hidden_size, bundle.adapter.vocab_size, drafter.vocab_ids)
    return plain, target, draft


def artifact_steps(path: str, threads: int, capacity: int, backend: str | None):
    """(plain, target, draft) step models over a compiled artifact's graphs (accelc compile --drafter fused)."""
    from accelc.runtime.artifact import open_artifact
    from accelc.runtime.kv_cache import KVCache
    from accelc.runtime.speculative.artifact import load_drafter
    from accelc.runtime.speculative.steps import GraphStep
    art = open_artifact(path, backend=backend, threads=threads, report=False)
    drafter = load_drafter(art)
    if drafter is None:
        raise SystemExit(f"{path} has no drafter graphs (compile it with --drafter fused)")
    plain = GraphStep(art.runners["decoder"].forward, KVCache(art.layers, capacity, art.kv_heads, art.head_dim))
    return art, (plain, *drafter.steps(capacity))


def eval_prompts(tokenizer, n: int, length: int) -> list[list[int]]:
    from accelc.models.corpus import load_text, token_stream
    ids = token_stream(tokenizer, load_text("eval"))
    step = max(length, (ids.numel() - length) // max(n, 1))
    return [ids[i * step:i * step + length].tolist() for i in range(n)]


def bench_ours(plain, target, draft, prompts, max_new: int, k: int) -> dict:
    from accelc.runtime.speculative.loop import SpecConfig, SpecStats, autoregressive_generate, speculative_generate
    res = {}
    refs, t_ar, n_ar = [], 0.0, 0
    for p in prompts:
        plain.truncate(0)
        plain.forward(p[:-1])                       # prefill outside the timed decode
        t0 = time.perf_counter()
        out = autoregressive_generate(_Resume(plain, len(p) - 1), p, max_new)
        t_ar += time.perf_counter() - t0
        n_ar += len(out)
        refs.append(out)
    res["autoregressive"] = {"decode_tok_s": round(n_ar / t_ar, 2)}
    configs = {f"spec_fixed_k{j}": SpecConfig(k=j, draft_mode="fixed") for j in sorted({1, 2, k})}
    configs["spec_confidence"] = SpecConfig(draft_mode="confidence", k_max=2 * k)
    configs["spec_heuristic"] = SpecConfig(k=k, draft_mode="heuristic", k_max=2 * k)
    for name, cfg in configs.items():
        stats, same = SpecStats(), True
        for p, ref in zip(prompts, refs):
            out, stats = speculative_generate(target, draft, p, max_new, cfg, stats=stats)
            same &= out == ref
        decode = stats.draft_s + stats.verify_s + stats.other_s
        res[name] = {**stats.to_json(), "decode_tok_s": round((stats.emitted - len(prompts)) / decode, 2),
                     "identical_to_autoregressive": bool(same)}
    return res


def bench_run_path(art, prompts, max_new: int) -> dict:
    """Plain decoding as `accelc run --no-speculative` does it (runtime/generate.py: on OpenVINO CPU the
    stateful graph with the head slice), the baseline speculative decoding has to beat."""
    from accelc.runtime.generate import generate
    steps, secs = 0, 0.0
    for p in prompts:
        r = generate(art, p, max_new)
        steps, secs = steps + r.decode_steps, secs + r.decode_s
    return {"decode_tok_s": round(steps / secs, 2) if secs > 0 else None, "decode_steps": steps}


class _Resume:
    """A step model whose first truncate(0) keeps an already prefilled prefix (to time decode only)."""

    def __init__(self, step, keep: int):
        self.step, self.keep = step, keep

    @property
    def length(self):
        return self.step.length

    def forward(self, tokens):
        return self.step.forward(tokens)

    def truncate(self, length):
        self.step.truncate(max(length, self.keep) if self.keep else length)
        self.keep = 0


def bench_genai(ckpt: Path, layers: int, prompts_text: list[str], max_new: int, k: int, threads: int,
                workdir: Path) -> dict:
    """openvino-genai LLMPipeline, plain and speculative with the target truncated to `layers` layers (untrained)."""
    import openvino_genai as ov_genai
    from optimum.intel import OVModelForCausalLM
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    tdir, ddir, dsrc = workdir / "genai-target", workdir / "genai-draft", workdir / "draft-src"
    OVModelForCausalLM.from_pretrained(str(ckpt), export=True).save_pretrained(tdir)
    cfg = AutoConfig.from_pretrained(str(ckpt))
    cfg.num_hidden_layers = layers
    AutoModelForCausalLM.from_pretrained(str(ckpt), config=cfg).save_pretrained(dsrc)
    AutoTokenizer.from_pretrained(str(ckpt)).save_pretrained(dsrc)
    OVModelForCausalLM.from_pretrained(str(dsrc), export=True).save_pretrained(ddir)
    from openvino_tokenizers import convert_tokenizer
    import openvino as ov
    tok = AutoTokenizer.from_pretrained(str(ckpt))
    for d in (tdir, ddir):
        t, dt = convert_tokenizer(tok, with_detokenizer=True)
        ov.save_model(t, str(d / "openvino_tokenizer.xml"))
        ov.save_model(dt, str(d / "openvino_detokenizer.xml"))
    props = {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32", "KV_CACHE_PRECISION": "f32"}
    sched = ov_genai.SchedulerConfig()
    sched.enable_prefix_caching = False
    out = {}
    for name, kw in {"genai_autoregressive": {}, f"genai_spec_k{k}": {
            "draft_model": ov_genai.draft_model(str(ddir), "CPU", **props)}}.items():
        pipe = ov_genai.LLMPipeline(str(tdir), "CPU", scheduler_config=sched, **kw, **props)
        gc = ov_genai.GenerationConfig(max_new_tokens=max_new, min_new_tokens=max_new, do_sample=False)
        if kw:
            gc.num_assistant_tokens = k
        n, t = 0, 0.0
        for p in prompts_text:
            r = pipe.generate([p], gc)
            m = r.perf_metrics
            t += m.get_generate_duration().mean / 1000 - m.get_ttft().mean / 1000
            n += max_new - 1
        out[name] = {"decode_tok_s": round(n / t, 2) if t > 0 else None}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--engine", choices=["openvino", "torch"], default="openvino")
    ap.add_argument("--layers", type=int, default=8, help="drafter exit layer L")
    ap.add_argument("--steps", type=int, default=300, help="drafter training steps")
    ap.add_argument("--vocab", type=int, default=8192, help="drafter head size (0 = full)")
    ap.add_argument("--windows", type=int, default=512, help="drafter training windows")
    ap.add_argument("--prompts", type=int, default=5)
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--max-new", type=int, default=128)
    ap.add_argument("-k", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--genai", action="store_true", help="also run openvino-genai (needs the compare extra)")
    ap.add_argument("--json", help="write the result here too")
    ap.add_argument("--artifact", help="bench a compiled artifact's graphs (accelc compile --drafter fused) instead "
                    "of training a drafter here; --engine then picks openvino or onnxruntime")
    ap.add_argument("--backend", choices=["openvino", "onnxruntime"], help="artifact backend (default: its choice)")
    args = ap.parse_args(argv)

    if args.artifact:
        return bench_artifact(args)
    from accelc.models.sources import load_model
    from accelc.passes.drafting.drafter import FusedDrafterConfig, FusedDrafterPass
    torch.manual_seed(0)
    bundle = load_model(args.model)
    t0 = time.perf_counter()
    FusedDrafterPass(FusedDrafterConfig(layers=args.layers, steps=max(args.steps, 1), vocab=args.vocab,
                                        windows=args.windows, holdout=1))(bundle)
    result = {"model": args.model, "engine": args.engine, "threads": args.threads, "k": args.k,
              "max_new": args.max_new, "prompts": args.prompts, "drafter": bundle.records["drafter"],
              "drafter_build_s": round(time.perf_counter() - t0, 1)}
    prompts = eval_prompts(bundle.tokenizer, args.prompts, args.prompt_len)
    with tempfile.TemporaryDirectory(prefix="accelc-bench-spec-") as tmp:
        fns = graph_fns(bundle, bundle.records["drafter_module"], args.engine, args.threads, Path(tmp))
        steps = make_steps(fns, bundle, bundle.records["drafter_module"], args.prompt_len + args.max_new + 16)
        result["ours"] = bench_ours(*steps, prompts, args.max_new, args.k)
        if args.genai:
            from accelc.models.sources import packaged_checkpoint
            texts = [bundle.tokenizer.decode(p) for p in prompts]
            result["genai"] = bench_genai(packaged_checkpoint(args.model), args.layers, texts, args.max_new, args.k,
                                          args.threads, Path(tmp))
    emit(result, args.json)
    return 0


def bench_artifact(args) -> int:
    art, steps = artifact_steps(args.artifact, args.threads, args.prompt_len + args.max_new + 2 * args.k + 8,
                                args.backend)
    rec = art.manifest.get("records", {}).get("drafter", {})
    result = {"artifact": str(args.artifact), "backend": art.choice.backend, "weights": art.weights,
              "threads": args.threads, "k": args.k, "max_new": args.max_new, "prompts": args.prompts,
              "drafter": rec}
    prompts = eval_prompts(art.tokenizer, args.prompts, args.prompt_len)
    result["ours"] = bench_ours(*steps, prompts, args.max_new, args.k)
    result["ours"]["autoregressive_run"] = bench_run_path(art, prompts, args.max_new)
    if args.genai:
        from accelc.models.sources import packaged_checkpoint
        texts = [art.tokenizer.decode(p) for p in prompts]
        with tempfile.TemporaryDirectory(prefix="accelc-bench-spec-") as tmp:
            result["genai"] = bench_genai(packaged_checkpoint(args.model), int(rec.get("exit_layer", args.layers)),
                                          texts, args.max_new, args.k, args.threads, Path(tmp))
    emit(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
