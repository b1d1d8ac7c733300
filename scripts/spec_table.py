"""Markdown tables from a scripts/bench_lookup.py JSON file (the docs' speculative-decoding results are pasted from
this output, never typed):

    .venv/bin/python scripts/spec_table.py docs/passes/results/speculative_DATE.json
"""
from __future__ import annotations

import json
import sys


def rows(res: dict) -> list[str]:
    out = ["| prompts | engine | decode tok/s | vs our plain | tokens / round | acceptance by draft position (1..4) | "
           "draft / verify share | identical to plain |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for set_name, s in res["sets"].items():
        stats, same = s.get("speculative_stats", {}), s.get("identical_to_plain", {})
        for name, r in s.items():
            if not isinstance(r, dict) or "decode_tok_s" not in r:
                continue
            st = stats.get(name)
            tpr = acc = share = ""
            if st:
                tpr = f"{st['emitted'] / st['rounds']:.2f}" if st.get("rounds") else ""
                acc = " / ".join(f"{a:.2f}" for a in st["acceptance_by_position"][:4])
                share = f"{st['draft_share']:.2f} / {st['verify_share']:.2f}"
            ident = "" if name not in same else ("yes" if same[name] else "NO")
            out.append(f"| {set_name} | {name} | {r['decode_tok_s']} | {r['vs_accelc_plain']} | {tpr} | {acc} | "
                       f"{share} | {ident} |")
    return out


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    res = json.loads(open(argv[0]).read())
    m = res.get("machine", {})
    print(f"{m.get('cpu', '?')}, {m.get('cores', '?')} cores; {res.get('date', '?')}; commit {res.get('commit', '?')}")
    print("\n".join(rows(res)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
