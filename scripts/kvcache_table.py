"""Markdown tables for docs/runtime/kv-cache.md from the raw JSON of scripts/bench_kvcache.py (perplexity against
context) and scripts/bench_kvcache_run.py (memory, decode speed, passkey).

    .venv/bin/python scripts/kvcache_table.py --ppl docs/runtime/results/kvcache_*.json --run docs/runtime/results/kvcache_run_*.json
    .venv/bin/python scripts/kvcache_table.py --lookup docs/runtime/results/kvcache_lookup_*.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path


def machine_line(d: dict) -> str:
    m = d.get("machine") or {}
    return (f"{m.get('cpu')}, {m.get('cores')} cores, ISA {'/'.join(m.get('isa') or [])}; {d.get('date', '')[:10]}; "
            f"commit {str(d.get('commit', ''))[:12]}")


def ppl_table(docs: list[dict]) -> str:
    rows, contexts, meta = {}, set(), []
    for d in docs:
        meta.append(f"- {Path(d['_path']).name}: {d.get('text')}, chunk {d.get('chunk')}, "
                    f"{d.get('tokens_per_context') or d.get('windows')} tokens per context; {machine_line(d)}")
        for r in d["rows"]:
            rows.setdefault(r["cache"], {})[r["context"]] = r["perplexity"]
            contexts.add(r["context"])
    cols = sorted(contexts)
    full = rows.get("full", {})

    def order(name):
        kind, _, rest = name.partition(":")
        m = int(rest.split(",")[0].split()[0]) if rest else 0
        return (m, ["full", "window", "sink", "h2o", "lococo"].index(kind) if kind in
                ("full", "window", "sink", "h2o", "lococo") else 9, name)
    out = ["| cache | " + " | ".join(f"{c} tokens" for c in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name in sorted(rows, key=order):
        cells = []
        own = rows.get(f"full ({name.removesuffix(' lambda=0')} norms)", {})    # bench_kvcache.py --tuned-full
        for c in cols:
            v = rows[name].get(c)
            if v is None:
                cells.append("")
            elif name == "full" or c not in full:
                cells.append(f"{v:.2f}")
            elif own.get(c):        # a tuned row: also against the full cache with the same tuned weights
                cells.append(f"{v:.2f} ({v / full[c]:.3f}x; {v / own[c]:.3f}x own)")
            else:
                cells.append(f"{v:.2f} ({v / full[c]:.3f}x)")
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(out + [""] + meta)


def run_table(docs: list[dict]) -> str:
    out = ["| cache | context | RSS after decode (MB) | peak RSS (MB) | prefill s | decode tok/s | passkey |",
           "|---|---|---|---|---|---|---|"]
    meta = []
    for d in docs:
        meta.append(f"- {Path(d['_path']).name}: {d.get('decode')} decode tokens, {d.get('threads')} threads; "
                    f"{machine_line(d)}")
        groups: dict = {}      # --rounds: one line per cache and context, medians (decode: median and range)
        for r in d["rows"]:
            if "error" in r:
                out.append(f"| {r.get('artifact')} | {r['context']} | error: {' '.join(r['error'])[:80]} | | | | |")
                continue
            groups.setdefault((r["cache"], r["backend"], r["context"]), []).append(r)
        for (cache, backend, ctx), rs in sorted(groups.items()):
            med = lambda k: statistics.median(x[k] for x in rs)      # noqa: E731
            pk = next((x["passkey"] for x in rs if x.get("passkey")), None)
            pks = f"{pk['correct']}/{pk['trials']}" if pk else ""
            tok = [x["decode_tok_s"] for x in rs]
            dec = f"{med('decode_tok_s'):.1f}" + (f" ({min(tok):.1f}-{max(tok):.1f}, {len(tok)} rounds)" if len(rs) > 1 else "")
            out.append(f"| {cache} ({backend}) | {ctx} | {med('rss_mb'):.0f} | {med('peak_rss_mb'):.0f} | "
                       f"{med('prefill_s'):.2f} | {dec} | {pks} |")
    return "\n".join(out + [""] + meta)


def lookup_table(docs: list[dict]) -> str:
    """scripts/bench_lookup.py runs on fixed-cache artifacts: plain against prompt lookup, per prompt set."""
    out = ["| artifact | prompts | plain tok/s | lookup tok/s | x plain | acceptance | tokens per verify pass | "
           "output equal to plain |", "|---|---|---|---|---|---|---|---|"]
    meta = []
    for d in docs:
        art = Path(d["artifact"]).name
        meta.append(f"- {Path(d['_path']).name}: {art}, {d.get('backend')}, {d.get('threads')} threads, "
                    f"{d.get('max_new')} new tokens; {machine_line(d)}")
        for name, st in d["sets"].items():
            plain = next(v for k, v in st.items() if k.startswith("accelc plain"))
            key, look = next((k, v) for k, v in st.items() if k.startswith("accelc lookup"))
            sp = st["speculative_stats"][key]
            out.append(f"| {art} | {name} ({len(d['prompt_tokens'][name])}) | {plain['decode_tok_s']:.1f} | "
                       f"{look['decode_tok_s']:.1f} | {look['vs_accelc_plain']:.2f}x | {sp['acceptance_rate']:.2f} | "
                       f"{sp['mean_accepted']:.2f} | {'yes' if st['identical_to_plain'][key] else 'no'} |")
    return "\n".join(out + [""] + meta)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ppl", nargs="*", default=[])
    ap.add_argument("--run", nargs="*", default=[])
    ap.add_argument("--lookup", nargs="*", default=[], help="scripts/bench_lookup.py JSON on fixed-cache artifacts")
    a = ap.parse_args()
    load = lambda p: {**json.loads(Path(p).read_text()), "_path": p}     # noqa: E731
    if a.ppl:
        print("### Perplexity against context (torch reference; the text is on each file's line below)\n")
        print(ppl_table([load(p) for p in a.ppl]) + "\n")
    if a.run:
        print("### Memory, decode speed and passkey against context (artifacts)\n")
        print(run_table([load(p) for p in a.run]) + "\n")
    if a.lookup:
        print("### Speculative decoding (prompt lookup) over fixed caches\n")
        print(lookup_table([load(p) for p in a.lookup]) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
