"""The pv-int table (docs/passes/quantization.md, issue 16): low-bit OpenVINO artifacts side by side, same protocol.

    .venv/bin/python scripts/bench_int.py fp32=out/s-fp32 nncf-int4=out/nncf-int4 pv-int4=out/pv-int4 ... \
        --max-tokens 32768 --rounds 3 --threads 2 --out docs/passes/results/pv_int_DATE.json

Per artifact (each LABEL=DIR was made by `accelc compile` or scripts/nncf_baseline.py):
  - bits per weight of the decoder linears and of the embedding (tied head included), counted from the OpenVINO IR
    itself: every constant feeding a MatMul's weight input (codes, scales, zero points, or a dense float weight),
    its element bits times its elements, over the weights it reconstructs (codebook graphs: codes, codebooks and
    scales);
  - perplexity by `accelc eval DIR --backend openvino` on Brown (the calibration domain) and on sotu (off it),
    full protocol by default (32,768 tokens in 512-token windows);
  - artifact MB (the IR's .xml + .bin), resident MB (peak RSS of a fresh process that loaded the artifact and decoded
    128 tokens; scripts/bench_native.py's probe) and decode tokens/s (greedy, 128 new tokens, median over rounds,
    engines alternating), on the OpenVINO backend at f32 inference precision and on the native backend where the
    artifact has native/ weights (with `--onnx`, on ONNX Runtime too where it has an ONNX graph);
  - compile seconds: the sum of the artifact's pass times (for an NNCF row: the fp32 compile it started from plus
    NNCF's own seconds);
  - the runtime's fixed overhead: the same probe on a 2-layer random model compiled here with the first artifact's
    tokenizer and vocabulary (`empty` rows, OpenVINO and native), so resident memory can be read as weight bytes +
    overhead; the native weight file's size.
Writes raw JSON with machine, date, commit and command line (scripts/provenance.py).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench_native import PROBE, _probe
from provenance import ROOT, provenance

BITS = {"f32": 32, "f16": 16, "bf16": 16, "u8": 8, "i8": 8, "u4": 4, "i4": 4, "u3": 3, "u2": 2}


# ops between a MatMul / Gather and the constants its weight is rebuilt from: NNCF's and accelc's decompression
# (Convert, Subtract, Multiply, Reshape, Transpose) and the codebook graphs' lookups (Gather of codebook rows by codes,
# Add over the codebooks)
DECOMPRESSION = ("Convert", "Subtract", "Multiply", "Reshape", "Transpose", "Gather", "Add", "Concat", "Unsqueeze",
                 "Squeeze")


def ir_bits(xml: Path, vocab: int, binf: Path | None = None) -> dict:
    """Bits of the weights of every MatMul and Gather (embedding) in the IR, from its constants."""
    import openvino as ov
    model = ov.Core().read_model(str(xml), str(binf or xml.with_suffix(".bin")))
    lin_bits = lin_w = emb_bits = emb_w = 0
    seen = set()
    for op in model.get_ops():
        if op.get_type_name() not in ("MatMul", "Gather"):
            continue
        port = 1 if op.get_type_name() == "MatMul" else 0
        src = op.input_value(port).get_node()
        consts, stack, dynamic = [], [src], False
        while stack:
            n = stack.pop()
            if n.get_type_name() == "Constant":
                consts.append(n)
            elif n.get_type_name() == "Parameter":
                dynamic = True
            elif n.get_type_name() in DECOMPRESSION:
                stack += [i.get_source_output().get_node() for i in n.inputs()]
        if not consts or dynamic:
            continue
        shape = list(op.input_value(port).get_partial_shape().to_shape())
        if len(shape) != 2 or shape[0] * shape[1] < 4096:
            continue
        bits = 0
        for c in consts:
            if c.get_friendly_name() in seen or len(c.get_output_shape(0)) <= 1 and c.get_element_type().bitwidth == 64:
                continue
            seen.add(c.get_friendly_name())
            n = 1
            for d in c.get_output_shape(0):
                n *= d
            bits += n * c.get_element_type().bitwidth
        if vocab in shape:
            emb_bits, emb_w = emb_bits + bits, emb_w + (shape[0] * shape[1] if bits else 0)
        else:
            lin_bits, lin_w = lin_bits + bits, lin_w + shape[0] * shape[1]
    return {"linear_bits_per_weight": round(lin_bits / max(lin_w, 1), 4), "linear_weights": lin_w,
            "embedding_bits_per_weight": round(emb_bits / max(emb_w, 1), 4), "embedding_weights": emb_w}


def perplexity(art: Path, text: str, max_tokens: int) -> dict:
    r = subprocess.run([sys.executable, "-m", "accelc.compiler.cli", "eval", str(art), "--backend", "openvino",
                        "--text", text, "--max-tokens", str(max_tokens), "--no-sample", "--json"],
                       capture_output=True, text=True, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if r.returncode:
        return {"error": r.stderr[-600:]}
    out = json.loads(r.stdout)
    return {"perplexity": out["perplexity"], "tokens": out["tokens"], "seconds": out.get("seconds")}


def native_bytes(art: Path) -> dict:
    """The native backend's weight file (what its resident memory holds beside the runtime's fixed overhead)."""
    f = art / "native" / "weights.safetensors"
    if not f.exists():
        return {}
    rec = json.loads((art / "manifest.json").read_text())["records"]["native"]
    return {"native_weights_mb": round(f.stat().st_size / 2 ** 20, 1), "native_formats": rec.get("linear_formats")}


def onnx_mb(art: Path, graph: dict) -> dict:
    """The ONNX graph's file and external data (MB), when the artifact has one."""
    if not graph.get("onnx") or not (art / graph["onnx"]).is_file():
        return {}
    files = [art / graph["onnx"]] + [p for p in (art / graph["onnx"]).parent.glob(Path(graph["onnx"]).name + ".data*")]
    return {"onnx_mb": round(sum(p.stat().st_size for p in files) / 1e6, 1)}


def compile_seconds(art: Path) -> dict:
    m = json.loads((art / "manifest.json").read_text())
    q = (m.get("records") or {}).get("quantization") or {}
    own = sum(float(p.get("seconds") or 0) for p in m.get("passes", []))
    out = {"passes_s": round(own, 1)}
    if "nncf" in q:
        src = Path(q.get("derived_from", ""))
        base = compile_seconds(src)["passes_s"] if (src / "manifest.json").exists() else None
        out.update(nncf_s=q["seconds"]["nncf"], fp32_compile_s=base,
                   passes_s=round((base or 0) + q["seconds"]["nncf"], 1))
    return out


def empty_artifact(d: Path, like: Path) -> Path:
    """A 2-layer random Llama (hidden 64) with the tokenizer and vocabulary of the artifact `like`, compiled for the
    CPU (OpenVINO graphs and native weights): the runtime's fixed memory overhead with that model's tokenizer and
    logits, next to almost no weights."""
    from transformers import AutoTokenizer

    from accelc.models.tiny import tiny_model
    tok = AutoTokenizer.from_pretrained(str(like / "tokenizer"))
    src = d / "empty-src"
    ids = {k: getattr(tok, k) for k in ("bos_token_id", "eos_token_id", "pad_token_id") if getattr(tok, k) is not None}
    tiny_model("llama", seed=0, vocab_size=len(tok), **ids).save_pretrained(src)
    tok.save_pretrained(src)
    out = d / "empty"
    subprocess.run([sys.executable, "-m", "accelc.compiler.cli", "compile", str(src), "--target", "cpu", "--formats",
                    "openvino,native", "--weights", "int8", "-o", str(out), "--no-validate"], check=True,
                   capture_output=True, cwd=ROOT)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifacts", nargs="+", help="LABEL=DIR")
    ap.add_argument("--max-tokens", type=int, default=32768)
    ap.add_argument("--texts", nargs="+", default=["brown-eval", "sotu"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--skip-quality", action="store_true")
    ap.add_argument("--onnx", action="store_true", help="also decode on ONNX Runtime (artifacts with an ONNX graph)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--resume", action="store_true", help="keep the perplexity of rows already in --out for the same "
                    "LABEL=DIR (not measured again; the IR's columns are read again); speed is measured for every "
                    "artifact")
    a = ap.parse_args()
    arts = dict(x.split("=", 1) for x in a.artifacts)
    rows = {}
    if a.resume and Path(a.out).exists():
        rows.update(json.loads(Path(a.out).read_text())["rows"])
    result = {**provenance(), "protocol": {"max_tokens": a.max_tokens, "texts": a.texts, "rounds": a.rounds,
                                           "threads": a.threads, "new_tokens": a.new}, "rows": rows}

    def save():
        Path(a.out).write_text(json.dumps(result, indent=1))

    for label, d in arts.items():
        kept = (rows.get(label) or {}).get("perplexity") if rows.get(label, {}).get("artifact") == d else None
        art = Path(d)
        m = json.loads((art / "manifest.json").read_text())
        g = m["graphs"]["decoder"]
        xml = art / g["openvino"]
        binf = art / g["openvino_bin"] if g.get("openvino_bin") else xml.with_suffix(".bin")
        q = (m.get("records") or {}).get("quantization") or {}
        row = rows[label] = {"artifact": str(art), "method": q.get("method", "fp32"), "int": q.get("int"),
                             **ir_bits(xml, int(m["model"]["vocab"]), binf),
                             "artifact_mb": round((xml.stat().st_size + binf.stat().st_size) / 1e6, 1),
                             "compile": compile_seconds(art), "native": (art / "native").is_dir(),
                             "onnx": bool(g.get("onnx")) and (art / g["onnx"]).is_file(), **onnx_mb(art, g),
                             **native_bytes(art)}
        if q.get("tuning"):
            row["tuning"] = {k: q["tuning"].get(k) for k in ("steps", "batch", "lr", "lr_v", "tau", "trust",
                                                             "kl_heldout_before", "kl_heldout_after")}
        if kept:                            # --resume: the IR-read columns again, the perplexity kept
            row["perplexity"] = kept
        elif not a.skip_quality:
            row["perplexity"] = {t: perplexity(art, t, a.max_tokens) for t in a.texts}
        print(label, json.dumps(row)[:400], file=sys.stderr, flush=True)
        save()
    if a.skip_speed:
        return
    with tempfile.TemporaryDirectory() as tmp:
        runs = [(label, "openvino", d) for label, d in arts.items()]
        runs += [(label, "native", d) for label, d in arts.items() if rows[label]["native"]]
        runs += [(label, "onnxruntime", d) for label, d in arts.items() if a.onnx and rows[label]["onnx"]]
        empty = empty_artifact(Path(tmp), Path(next(iter(arts.values()))))
        result["empty"] = native_bytes(empty)       # its own (int8) weights, taken out of the overhead
        empty = str(empty)
        runs += [("empty", "openvino", empty), ("empty", "native", empty)]
        speed: dict[str, list] = {}
        for r in range(a.rounds):
            order = runs[r % len(runs):] + runs[:r % len(runs)]
            for label, engine, d in order:
                got = _probe(PROBE, engine, d, a.threads, a.new)
                speed.setdefault(f"{label}/{engine}", []).append(got)
                print(r, label, engine, {k: got.get(k) for k in ("decode_tok_s", "peak_rss_mb", "error")},
                      file=sys.stderr, flush=True)
        result["speed"] = {}
        for key, got in speed.items():
            ok = [g for g in got if "error" not in g]
            result["speed"][key] = {"runs": got, **({
                "decode_tok_s": statistics.median(g["decode_tok_s"] for g in ok),
                "peak_rss_mb": statistics.median(g["peak_rss_mb"] for g in ok)} if ok else {})}
        save()


if __name__ == "__main__":
    main()
