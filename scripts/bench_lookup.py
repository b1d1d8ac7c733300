"""Benchmark speculative decoding (`accelc run --draft-mode lookup|cost|combined`) against our plain decoding and
openvino-genai's LLMPipeline, plain and with its prompt_lookup mode, in one run, alternating engines per prompt.

    .venv/bin/python scripts/bench_lookup.py --json docs/passes/results/lookup_DATE.json
    .venv/bin/python scripts/bench_lookup.py --general 2 --grounded 2 --max-new 32      # smoke

Two prompt sets, both from Brown's evaluation split (never calibration text):
- general: --general windows of --prompt-len tokens, continued as raw text (no chat template);
- grounded: --grounded passages (consecutive sentences, 100-200 tokens, one from each of --grounded files spread
  over the split) inside an instruction that asks to repeat, copy, quote or rewrite them (chat template), so the answer restates the input.
Engines (greedy, --threads threads, the same token ids; ours stop at EOS, and so does genai):
- accelc plain:       runtime/generate.py on the artifact (--backend, default its choice), as `accelc run`
- accelc lookup:      runtime/speculative/artifact.py run_speculative(draft_mode="lookup") on the same backend
- accelc drafter:     the artifact's drafter graphs (an EAGLE or fused drafter; --artifact compiled with
                      --drafter) under the cost model (draft_mode="cost"); only when the artifact has them
- accelc drafter+lookup: draft_mode="combined": lookup where the text has a match, the drafter elsewhere
- --modes picks our speculative engines instead: also "specdec" (the EAGLE drafter's acceptance head decides the
  draft length; "specdec:H" with SpecDec++'s fixed threshold H), "confidence" (the baseline stop rule) and
  "combined+specdec" (combined, the drafter's rounds under the head)
- genai plain:        openvino_genai.LLMPipeline on the artifact's genai folder (openvino/), prefix caching off
- genai lookup k=N:   the same with prompt_lookup=True, num_assistant_tokens=N, max_ngram_size=3
- genai draft-model:  the same with draft_model= another artifact's genai folder (--genai-draft, e.g. the int4
                      build of the same model), num_assistant_tokens=--genai-draft-k
Every speculative output of ours is checked token for token against our plain output. Decode tok/s = (new tokens - 1) /
(time after the first token), summed over a set's prompts. Writes raw JSON with the machine (scripts/provenance.py).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from provenance import emit

TEMPLATES = ("Repeat the following text exactly, word for word.\n\n{p}",
             "Copy this passage without changing anything:\n\n{p}",
             "Quote the text below in full, from its first word to its last.\n\n{p}",
             "Rewrite the following text, keeping its wording where you can:\n\n{p}")


def general_prompts(tok, n: int, length: int) -> list[list[int]]:
    from accelc.models.corpus import load_text, token_stream
    ids = token_stream(tok, load_text("eval"))
    step = max(length, (ids.numel() - length) // max(n, 1))
    return [ids[i * step:i * step + length].tolist() for i in range(n)]


def grounded_prompts(tok, n: int, least: int = 100, most: int = 200) -> list[list[int]]:
    """n passages (consecutive sentences of one evaluation file, least..most tokens) spread over the split's files,
    each inside one of TEMPLATES (chat template applied)."""
    from accelc.models.corpus import load_text
    from accelc.runtime.generate import encode_prompt
    files = [f.split("\n") for f in load_text("eval").split("\n\n") if f.strip()]
    out = []
    for i in range(n):
        sents = files[i * len(files) // n]
        start = (i * 7919) % max(len(sents) - 20, 1)          # a spread of starting sentences within the file
        passage, count = [], 0
        for sent in sents[start:] + sents[:start]:
            c = len(tok(sent, add_special_tokens=False)["input_ids"])
            if count + c > most:                             # too long to add: start again after it
                passage, count = [], 0
                continue
            passage.append(sent)
            count += c
            if count >= least:
                break
        if count < least:
            raise SystemExit(f"no passage of {least}-{most} tokens in evaluation file {i * len(files) // n}")
        out.append(encode_prompt(tok, TEMPLATES[i % len(TEMPLATES)].format(p=" ".join(passage))))
    return out


class Ours:
    """Our runtime on the artifact: plain decoding, or speculative with a draft mode (runtime/speculative/artifact.py
    RUN_MODES: "lookup", "combined" = lookup + the artifact's drafter, "cost" = the drafter under the cost model)."""

    def __init__(self, path, backend, threads, mode: str, k: int):
        from accelc.runtime.artifact import open_artifact
        from accelc.runtime.speculative.artifact import wants_full_logits
        mode, _, h = mode.partition(":")            # specdec:H = SpecDec++ with the fixed threshold H
        mode, _, rule = mode.partition("+")         # combined+specdec: the drafter's rounds stop on its head
        self.rule = rule or "cost"
        self.art = open_artifact(path, backend=backend, threads=threads, full_logits=wants_full_logits(mode),
                                 report=False)
        self.mode, self.k, self.h = mode, k, float(h) if h else None
        label = {"plain": "plain", "lookup": "lookup", "cost": "drafter", "combined": "drafter+lookup",
                 "confidence": "drafter confidence", "specdec": "drafter specdec"}[mode]
        label += (f" {rule}" if rule else "") + (f" h={h}" if h else "")
        self.name = f"accelc {label} ({self.art.choice.backend})"

    def run(self, ids, n):
        from accelc.runtime.generate import generate
        from accelc.runtime.sampling import SamplingConfig
        from accelc.runtime.speculative.artifact import run_speculative
        if self.mode == "plain":
            r = generate(self.art, ids, n)
            return r.tokens, r.decode_s, r.decode_steps, None
        r, stats = run_speculative(self.art, ids, n, SamplingConfig(), k=self.k, draft_mode=self.mode,
                                   reject_threshold=self.h, model_rule=self.rule)
        return r.tokens, r.decode_s, r.decode_steps, stats


class GenAI:
    """openvino-genai's LLMPipeline on the artifact's genai folder: plain, prompt lookup (lookup_k), or speculative
    with a draft model (draft: another genai folder with the same tokenizer, num_assistant_tokens = draft_k)."""

    def __init__(self, folder: Path, threads: int, lookup_k: int | None, draft: Path | None = None,
                 draft_k: int = 5):
        import openvino_genai as g
        from accelc.compiler.harness.bench_engines import ov_cpu_config
        self.g, self.k = g, lookup_k or (draft_k if draft else None)
        self.lookup = bool(lookup_k)
        sched = g.SchedulerConfig()
        sched.enable_prefix_caching = False
        kw = {"prompt_lookup": True} if lookup_k else {}
        if draft is not None:
            kw["draft_model"] = g.draft_model(str(draft), "CPU", **ov_cpu_config(threads))
        self.pipe = g.LLMPipeline(str(folder), "CPU", scheduler_config=sched, **kw, **ov_cpu_config(threads))
        self.name = (f"genai lookup k={lookup_k}" if lookup_k else
                     f"genai draft-model {draft.parent.name} k={draft_k}" if draft is not None else "genai plain")

    def run(self, ids, n):
        import numpy as np
        import openvino as ov
        cfg = self.g.GenerationConfig(max_new_tokens=n, do_sample=False)
        if self.k:
            cfg.num_assistant_tokens = self.k
        if self.lookup:
            cfg.max_ngram_size = 3
        x = np.array([ids], dtype=np.int64)
        res = self.pipe.generate(self.g.TokenizedInputs(ov.Tensor(x), ov.Tensor(np.ones_like(x))), cfg)
        pm = res.perf_metrics
        new = int(pm.get_num_generated_tokens())
        decode_s = pm.get_generate_duration().mean / 1000 - pm.get_ttft().mean / 1000
        return list(res.tokens[0]) if hasattr(res, "tokens") else [], decode_s, new - 1, None


def run_set(engines, prompts, max_new: int) -> dict:
    """Each prompt through every engine, the order rotated per prompt; -> per-engine sums and checks."""
    from accelc.runtime.speculative.loop import SpecStats
    acc = {e.name: {"steps": 0, "secs": 0.0, "tokens": 0} for e in engines}
    merged = {}
    identical, plain_name = {}, engines[0].name
    for i, ids in enumerate(prompts):
        order = engines[i % len(engines):] + engines[:i % len(engines)]
        outs = {}
        for e in order:
            toks, secs, steps, stats = e.run(ids, max_new)
            a = acc[e.name]
            a["steps"] += steps
            a["secs"] += secs
            a["tokens"] += len(toks)
            outs[e.name] = toks
            if stats is not None:
                merged.setdefault(e.name, SpecStats()).add(stats)
        for name, toks in outs.items():
            if name.startswith("accelc") and name != plain_name:
                identical[name] = identical.get(name, True) and toks == outs[plain_name]
        print(f"  prompt {i + 1}/{len(prompts)} ({len(ids)} tokens): " + ", ".join(
            f"{n.split(' (')[0]} {len(t)}" for n, t in outs.items()), file=sys.stderr, flush=True)
    res = {n: {"decode_tok_s": round(a["steps"] / a["secs"], 2) if a["secs"] else None, "new_tokens": a["tokens"],
               "decode_s": round(a["secs"], 3)} for n, a in acc.items()}
    base = res[plain_name]["decode_tok_s"]
    for n in res:
        res[n]["vs_accelc_plain"] = round(res[n]["decode_tok_s"] / base, 3) if base and res[n]["decode_tok_s"] else None
    res["speculative_stats"] = {n: st.to_json() for n, st in merged.items()}
    res["identical_to_plain"] = identical
    return res


def drafter_info(path: Path) -> dict | None:
    """The artifact's drafter: its training record (steps, time, held-out acceptance) and its graph files' sizes."""
    manifest = json.loads((path / "manifest.json").read_text())
    rec = (manifest.get("records") or {}).get("drafter")
    if not rec:
        return None
    sizes = {}
    for name, g in (manifest.get("graphs") or {}).items():
        if name != "decoder":
            files = [g.get("openvino"), g.get("onnx")]
            sizes[name] = {f: round(sum((path / x).stat().st_size for x in (f, f[:-4] + ".bin" if f.endswith(".xml")
                                                                                else f + ".data")
                                        if (path / x).is_file()) / 1e6, 1) for f in files if f}
    return {"record": rec, "graph_mb": sizes}


def add_prompt_args(ap) -> None:
    """The options of the two prompt sets and of our decoding (shared with scripts/lookup_match_stats.py)."""
    ap.add_argument("--backend", help="our backend (default: the artifact's choice)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--general", type=int, default=40)
    ap.add_argument("--grounded", type=int, default=20)
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--max-new", type=int, default=128)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--artifact", help="a compiled cpu artifact with a genai folder (default: compile the packaged "
                    "model into --workdir)")
    ap.add_argument("--workdir", default="out/bench-lookup", help="where the default artifact is compiled")
    add_prompt_args(ap)
    ap.add_argument("-k", type=int, default=8, help="our lookup draft cap (the cost model picks each round's length)")
    ap.add_argument("--genai-k", type=int, nargs="*", default=[5, 8], help="genai num_assistant_tokens values")
    ap.add_argument("--no-genai", action="store_true")
    ap.add_argument("--genai-draft", nargs="*", default=[], metavar="ARTIFACT",
                    help="artifacts whose genai folders serve as genai's draft model (same tokenizer)")
    ap.add_argument("--genai-draft-k", type=int, default=5, help="genai's num_assistant_tokens with a draft model")
    ap.add_argument("--no-drafter", action="store_true", help="skip the artifact's drafter engines")
    ap.add_argument("--modes", nargs="*", help="our speculative engines (default: lookup, and with a drafter cost and "
                    "combined, and specdec when it has an acceptance head); specdec:H = a fixed SpecDec++ threshold; "
                    "combined+specdec: the drafter's rounds of combined under its acceptance head")
    ap.add_argument("--json")
    args = ap.parse_args(argv)

    import accelc
    path = Path(args.artifact) if args.artifact else Path(args.workdir) / "smollm2-cpu"
    if not args.artifact and not (path / "manifest.json").is_file():
        print(f"compiling the packaged model into {path}", file=sys.stderr)
        accelc.compile("smollm2-135m", "cpu", path, force=True)
    from accelc.runtime.speculative.artifact import drafter_records
    has_drafter = drafter_records(json.loads((path / "manifest.json").read_text())) is not None
    manifest = json.loads((path / "manifest.json").read_text())
    head = bool(((manifest.get("graphs") or {}).get("eagle_draft") or {}).get("accept_head"))
    modes = ["plain"] + (args.modes if args.modes is not None else
                         ["lookup"] + (["cost", "combined"] + (["specdec"] if head else [])
                                       if has_drafter and not args.no_drafter else []))
    engines = [Ours(path, args.backend, args.threads, m, args.k) for m in modes]
    if not args.no_genai:
        folder = path / "openvino"
        if not (folder / "openvino_model.xml").is_file():
            raise SystemExit(f"{path} has no genai folder (compile with --formats ...,genai)")
        engines += [GenAI(folder, args.threads, None)] + [GenAI(folder, args.threads, k) for k in args.genai_k]
        engines += [GenAI(folder, args.threads, None, Path(d) / "openvino", args.genai_draft_k)
                    for d in args.genai_draft]
    tok = engines[0].art.tokenizer
    sets = {"general": general_prompts(tok, args.general, args.prompt_len),
            "grounded": grounded_prompts(tok, args.grounded)}
    t0 = time.perf_counter()
    result = {"artifact": str(path), "backend": engines[0].art.choice.backend, "threads": args.threads,
              "max_new": args.max_new, "k": args.k, "genai_k": [] if args.no_genai else args.genai_k,
              "genai_draft": [] if args.no_genai else args.genai_draft, "genai_draft_k": args.genai_draft_k,
              "prompt_tokens": {k: [len(p) for p in v] for k, v in sets.items()}, "sets": {}}
    for name, prompts in sets.items():
        if prompts:
            print(f"{name}: {len(prompts)} prompts", file=sys.stderr, flush=True)
            result["sets"][name] = run_set(engines, prompts, args.max_new)
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    result["drafter"] = drafter_info(path)
    emit(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
