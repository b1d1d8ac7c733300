"""Markdown table of a scripts/bench_int.py JSON file (the pv-int table in docs/passes/quantization.md).

    .venv/bin/python scripts/int_table.py docs/passes/results/pv_int_DATE.json
"""
from __future__ import annotations

import json
import sys


def fmt(x, nd=2):
    return "–" if x is None else f"{x:,.{nd}f}"


def main(path: str) -> None:
    d = json.load(open(path))
    rows, speed = d["rows"], d.get("speed", {})
    ref = rows.get("fp32", {}).get("perplexity", {})
    texts = d["protocol"]["texts"]
    m = d["machine"] if "machine" in d else {}
    print(f"Measured {d.get('date', '?')} on {m.get('cpu', '?')} ({m.get('cores', '?')} cores), "
          f"{d['protocol']['threads']} threads; perplexity on {d['protocol']['max_tokens']:,} tokens per text "
          f"(512-token windows); speed: greedy, {d['protocol']['new_tokens']} new tokens, median of "
          f"{d['protocol']['rounds']} alternating rounds, each in a fresh process. Raw: `{path}`.\n")
    head = ["row", "method", "bits/weight linears", "bits/weight embedding"]
    head += [f"ppl {t}" for t in texts] + [f"x fp32 {t}" for t in texts]
    head += ["artifact MB", "RSS MB after decode (openvino)", "decode tok/s (openvino)", "RSS MB after decode (native)",
             "decode tok/s (native)", "compile s"]
    print("| " + " | ".join(head) + " |")
    print("|" + " --- |" * len(head))
    for label, r in rows.items():
        ppl = r.get("perplexity", {})
        vals = [ppl.get(t, {}).get("perplexity") for t in texts]
        ratios = [None if v is None or not ref.get(t, {}).get("perplexity") else v / ref[t]["perplexity"]
                  for v, t in zip(vals, texts)]
        ov_s, nat = speed.get(f"{label}/openvino", {}), speed.get(f"{label}/native", {})
        cells = [label, r["method"], fmt(r["linear_bits_per_weight"], 3), fmt(r["embedding_bits_per_weight"], 3)]
        cells += [fmt(v) for v in vals] + [("–" if x is None else f"{x:.3f}x") for x in ratios]
        cells += [fmt(r["artifact_mb"], 1), fmt(_rss(ov_s), 0), fmt(ov_s.get("decode_tok_s"), 1),
                  fmt(_rss(nat), 0), fmt(nat.get("decode_tok_s"), 1), fmt(r["compile"]["passes_s"], 0)]
        print("| " + " | ".join(cells) + " |")
    ort = [(label, r) for label, r in rows.items() if f"{label}/onnxruntime" in speed]
    if ort:
        print("\nOn ONNX Runtime (the artifact's ONNX graph, same probe and rounds):\n")
        print("| row | ONNX MB | RSS MB after decode (onnxruntime) | decode tok/s (onnxruntime) |")
        print("| --- | --- | --- | --- |")
        for label, r in ort:
            o = speed[f"{label}/onnxruntime"]
            print(f"| {label} | {fmt(r.get('onnx_mb'), 1)} | {fmt(_rss(o), 0)} | {fmt(o.get('decode_tok_s'), 1)} |")
    if "empty/openvino" in speed:
        e = speed["empty/openvino"]
        print(f"\nRuntime fixed overhead (a 2-layer random model with the same tokenizer and vocabulary, int8, same "
              f"probe, OpenVINO): {fmt(_rss(e), 0)} MB after decoding.")
    empty = _rss(speed.get("empty/native", {}))
    own = (d.get("empty") or {}).get("native_weights_mb", 0)
    native = [(label, r) for label, r in rows.items() if r.get("native_weights_mb") and f"{label}/native" in speed]
    if empty is not None and native:
        empty -= own
        print(f"\nNative backend's fixed overhead (the same 2-layer model on native, less its own {fmt(own, 1)} MB "
              f"weight file): {fmt(empty, 0)} MB after decoding. Resident memory against the issue's bound (1.2 x the "
              "weight file + that overhead):\n")
        print("| row | native formats | native weights MB | RSS MB after decode (native) | bound MB | within |")
        print("| --- | --- | --- | --- | --- | --- |")
        for label, r in native:
            rss, bound = _rss(speed[f"{label}/native"]), 1.2 * r["native_weights_mb"] + empty
            print(f"| {label} | {', '.join(r.get('native_formats') or [])} | {fmt(r['native_weights_mb'], 1)} | "
                  f"{fmt(rss, 0)} | {fmt(bound, 0)} | {'yes' if rss is not None and rss <= bound else 'no'} |")


def _rss(s: dict):
    """Median resident MB after the decode (the probe's rss_mb; its peak is set by start-up imports, ~438 MB for
    every artifact below that, so it does not measure the model)."""
    runs = [r["rss_mb"] for r in s.get("runs", []) if "rss_mb" in r]
    return sorted(runs)[len(runs) // 2] if runs else None


if __name__ == "__main__":
    main(sys.argv[1])
