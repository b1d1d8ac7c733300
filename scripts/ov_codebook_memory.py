"""Does a codebook-quantized graph stay compressed through ONNX and OpenVINO? Sizes, IR ops, RSS, decode speed.

Builds the real model with every decoder Linear replaced by a CodebookLinear of the given scheme
with random codes (storage, memory and speed do not depend on the code values; accuracy does, and
is not measured here), exports it with the project's passes (export-onnx, export-openvino), and
reports: ONNX / IR file sizes, initializer and IR constant types, and - in a fresh process per
backend - resident memory after loading/compiling and greedy decode tokens/s. `--dense` does the
same for the unquantized model (the baseline).

    .venv/bin/python scripts/ov_codebook_memory.py --scheme 2x8g8 --out /tmp/ovcb
    .venv/bin/python scripts/ov_codebook_memory.py --dense --out /tmp/ovdense
"""
from __future__ import annotations

import argparse
import collections
import json
import math
import subprocess
import sys
import time
from pathlib import Path

from provenance import provenance  # machine, date, commit, command line (scripts/provenance.py)


def rss_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def build(args) -> dict:
    import torch
    from accelc.compiler.manager import PassManager
    from accelc.models.sources import load_model
    from accelc.passes.quantization.codebook_linear import CodebookLinear, Scheme, set_module
    from accelc.passes.export.export_onnx import ExportOnnxConfig, ExportOnnxPass
    from accelc.passes.export.export_openvino import ExportOpenVINOConfig, ExportOpenVINOPass
    torch.set_num_threads(1)
    b = load_model(args.model)
    b.workdir = Path(args.out)
    if not args.dense:
        s = Scheme.parse(args.scheme)
        gen = torch.Generator().manual_seed(0)
        path_of = {id(m): n for n, m in b.model.named_modules()}
        for lin in b.adapter.linears().values():
            w = lin.weight.detach()
            codes = torch.randint(0, s.size, (w.shape[0], w.shape[1] // s.group, s.codebooks), generator=gen)
            books = torch.randn(s.codebooks, s.size, s.group, generator=gen) / (w.shape[1] * s.codebooks) ** 0.5
            q = CodebookLinear(codes, books, w.norm(dim=1, keepdim=True), lin.bias)
            q.pack()
            set_module(b.model, path_of[id(lin)], q)
    t0 = time.perf_counter()
    log = PassManager([ExportOnnxPass(ExportOnnxConfig()), ExportOpenVINOPass(ExportOpenVINOConfig())]).run(b)
    rec = b.records["graphs"]["decoder"]
    return {"export_s": round(time.perf_counter() - t0, 1), "rec": {k: rec[k] for k in ("onnx", "openvino", "num_layers",
            "kv_heads", "head_dim")}, "metrics": {k: v for r in log for k, v in r.metrics.items()}}


def inspect(out: Path, rec: dict) -> dict:
    import onnx
    import openvino as ov
    m = onnx.load(str(out / rec["onnx"]), load_external_data=False)
    by_type = collections.Counter()
    for i in m.graph.initializer:
        n = 1
        for d in i.dims:
            n *= d
        by_type[onnx.TensorProto.DataType.Name(i.data_type)] += n
    ir = ov.Core().read_model(str(out / rec["openvino"]))
    ops = collections.Counter(op.get_type_name() for op in ir.get_ops())
    consts = collections.Counter()
    for op in ir.get_ops():
        if op.get_type_name() == "Constant":
            consts[str(op.get_element_type())] += math.prod(op.get_output_shape(0))
    onnx_mb = ((out / rec["onnx"]).stat().st_size + (out / (rec["onnx"] + ".data")).stat().st_size) / 1e6
    return {"onnx_mb": round(onnx_mb, 1), "onnx_initializer_elements": dict(by_type),
            "ir_bin_mb": round((out / rec["openvino"]).with_suffix(".bin").stat().st_size / 1e6, 1),
            "ir_ops": {k: ops[k] for k in ("Gather", "Convert", "MatMul", "Constant")},
            "ir_constant_elements": dict(consts)}


def measure(backend: str, out: Path, rec: dict, tokens: int) -> dict:
    """In this (fresh) process: RSS before/after load+compile, then decode `tokens` greedy tokens after an 8-token prompt."""
    import numpy as np
    from accelc.runtime.decode import decode_one, prefill
    from accelc.runtime.graph_set import load_graphs
    r0 = rss_mb()
    t0 = time.perf_counter()
    graphs = load_graphs(out, {"decoder": rec}, backend, "cpu")
    load_s = time.perf_counter() - t0
    r1 = rss_mb()
    state = graphs.new_state(8 + tokens)
    logits = prefill(state, np.arange(1, 9))
    t0 = time.perf_counter()
    for _ in range(tokens):
        logits = decode_one(state, int(np.argmax(logits)))
    tps = tokens / (time.perf_counter() - t0)
    return {"backend": backend, "rss_before_mb": round(r0), "rss_after_load_mb": round(r1),
            "rss_after_decode_mb": round(rss_mb()), "load_compile_s": round(load_s, 1), "decode_tok_s": round(tps, 2)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--scheme", default="2x8g8")
    p.add_argument("--dense", action="store_true")
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--out", required=True)
    p.add_argument("--measure", help=argparse.SUPPRESS)       # internal: backend to measure in this process
    args = p.parse_args(argv)
    out = Path(args.out)
    if args.measure:
        rec = json.loads((out / "build.json").read_text())["rec"]
        print(json.dumps(measure(args.measure, out, rec, args.tokens)))
        return 0
    info = build(args)
    (out / "build.json").write_text(json.dumps(info))
    info.update(inspect(out, info["rec"]))
    for backend in ("openvino", "onnxruntime"):
        res = subprocess.run([sys.executable, __file__, "--out", str(out), "--measure", backend, "--tokens",
                              str(args.tokens)], capture_output=True, text=True, check=True)
        info[backend] = json.loads(res.stdout.strip().splitlines()[-1])
    info = {**provenance(), **info}
    (out / "report.json").write_text(json.dumps(info, indent=1))
    print(json.dumps(info, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
