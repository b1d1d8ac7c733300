"""Markdown tables for docs/passes/encdec.md from the raw JSON of scripts/bench_encdec.py (quality, speed, size) and
scripts/encdec_adapt.py (held-out perplexity before and after adaptation).

    .venv/bin/python scripts/encdec_table.py --bench docs/passes/results/encdec_DATE.json \
        --adapt docs/passes/results/encdec_pick_DATE.json
"""
from __future__ import annotations

import argparse
import json
import sys


def machine_line(d: dict) -> str:
    m = d.get("machine") or {}
    return (f"{m.get('cpu')}, {m.get('cores')} cores, ISA {'/'.join(m.get('isa') or [])}; {d.get('date', '')[:10]}; "
            f"commit {str(d.get('commit', ''))[:12]}")


def _f(v, digits=2):
    return "-" if v is None else (f"{v:,.{digits}f}" if isinstance(v, float) else str(v))


def merge(docs: list[dict]) -> dict:
    """Rows of several bench files joined by label (a quality run and a speed run); the last file's header."""
    rows: dict = {}
    for d in docs:
        for r in d["rows"]:
            cur = rows.setdefault(r["label"], {**r, "speed": {}, "quality": {}})
            cur["speed"].update(r.get("speed") or {})
            cur["quality"].update(r.get("quality") or {})
    return {**docs[-1], "rows": list(rows.values()), "sources": [machine_line(d) for d in docs]}


def bench_table(d: dict) -> str:
    rows = d["rows"]
    base = rows[0]["label"]
    qual = sorted({q for r in rows for q in r["quality"]})
    prompts = sorted({p for r in rows for p in r["speed"]}, key=int)
    weights = any(r.get("weights") for r in rows)
    head = (["model", "decoder layers", "adaptation"] + (["weights"] if weights else []) + [f"ppl {q}" for q in qual] +
            [f"TTFT {p} (s)" for p in prompts] + [f"decode {p} tok/s (x {base})" for p in prompts] +
            ["artifact MB", "RSS MB"])
    out = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for r in rows:
        ad = r.get("adaptation") or {}
        rc = r.get("recovery") or {}          # a pruned source's LoRA recovery (records.pruning.recovery)
        adapt = f"{ad['steps']} steps, {ad['seconds'] / 60:.0f} min" if ad else \
            f"{rc['steps']} recovery steps, {rc['seconds'] / 60:.0f} min" if rc else "none"
        cells = [r["label"], _f(r.get("decoder_layers")), adapt] + ([r.get("weights") or "fp32"] if weights else [])
        cells += [_f(r["quality"].get(q, {}).get("perplexity")) for q in qual]
        sp = {p: r["speed"].get(p) or {} for p in prompts}
        cells += [_f(sp[p].get("ttft_s"), 3) for p in prompts]
        cells += [f"{_f(sp[p].get('decode_tok_s'), 1)} ({sp[p].get('decode_vs_' + base, 0):.2f}x)" for p in prompts]
        cells += [_f(r.get("artifact_mb"), 1), _f(max((sp[p].get("rss_mb", 0) for p in prompts), default=None), 0)]
        out.append("| " + " | ".join(cells) + " |")
    for src in d.get("sources", []):
        out.append(f"\n- {src}")
    out.append(f"\n{d.get('backend')} backend, {d.get('threads')} threads, {d.get('decode')} decoded tokens, median of "
               f"{d.get('repeats')} fresh processes per cell; {machine_line(d)}")
    return "\n".join(out)


def adapt_table(d: dict) -> str:
    out = ["| spec | encoder | decoder layers (from source layers) | steps (s), precision | source ppl | converted ppl | "
           "adapted ppl |", "|---|---|---|---|---|---|---|"]
    for r in d["rows"]:
        h = r.get("held_out") or {}
        ad = r.get("adaptation") or {}
        picked = "all" if r["decoder_from"] == list(range(r.get("encoder_layers") or -1)) else \
            ", ".join(map(str, r["decoder_from"]))
        out.append(f"| `{r['spec']}` | {r.get('encoder', '-')} | {r['decoder_layers']} ({picked}) | "
                   f"{ad.get('steps', 0)} ({_f(ad.get('seconds'), 0)}), {ad.get('precision', 'f32')} | "
                   f"{_f(h.get('source', {}).get('perplexity'))} | "
                   f"{_f(h.get('converted', {}).get('perplexity'))} | {_f(h.get('adapted', {}).get('perplexity'))} |")
    out.append(f"\nheld-out: the evaluation split, P = 256, 16 windows; {machine_line(d)}")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bench", nargs="*", default=[])
    ap.add_argument("--adapt", nargs="*", default=[])
    a = ap.parse_args()
    for p in a.adapt:
        print(f"### {p}\n\n{adapt_table(json.load(open(p)))}\n")
    if a.bench:
        print(f"### {', '.join(a.bench)}\n\n{bench_table(merge([json.load(open(p)) for p in a.bench]))}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
