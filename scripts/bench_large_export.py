"""Export of a model past 2 GB, measured: a randomly initialised Qwen2 with the real 0.5B configuration
(tests/passes/test_export_large.py QWEN2_05B), compiled for the cpu target at each precision with every
format (ONNX, OpenVINO IR, the genai folder); graph bytes per format, duplicate tensors, stray files, and
each pass's seconds and peak resident memory (the pass log's `memory`).

    .venv/bin/python scripts/bench_large_export.py --weights fp32,int8,int4 \
        --out docs/results/large_export_2026-12-02.json

Validation runs for fp32 and int8; on random weights int4 reorders 151,936 near-equal logits (greedy
agreement means nothing there), so int4 is compiled without it. Writes raw JSON with the machine, date,
commit and command line.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from provenance import ROOT, provenance

sys.path.insert(0, str(ROOT / "tests" / "passes"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", default="fp32,int8,int4")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    from accelc.compiler.bundle import ModelBundle
    from accelc.compiler.manager import PassManager
    from accelc.models.adapter import ArchAdapter
    from accelc.models.tiny import byte_tokenizer
    from accelc.passes.export.storage_report import report
    from accelc.targets import CompileOptions, get_target
    from test_export_large import _params, qwen2_05b
    model = qwen2_05b()
    params = _params(model)
    rows = []
    for weights in args.weights.split(","):
        work = Path(tempfile.mkdtemp(prefix="accelc-large-"))
        try:
            b = ModelBundle(model, byte_tokenizer(), ArchAdapter(model), workdir=work)
            t0 = time.perf_counter()
            log = PassManager(get_target("cpu").pipeline(CompileOptions(weights=weights,
                                                                        validate=weights != "int4"))).run(b)
            rep = report(work, b.records["graphs"])
            genai = sum(p.stat().st_size for p in (work / "openvino").iterdir() if p.name != "openvino_model.bin")
            row = {"weights": weights, "parameters": params, "seconds": round(time.perf_counter() - t0, 1),
                   "graph_bytes": rep["graph_bytes"], "files": rep["files"], "stray": rep["stray"],
                   "formats": {k: {"tensor_bytes": v["tensor_bytes"], "file_bytes": v["file_bytes"],
                                   "duplicates": v["duplicates"]} for k, v in rep["formats"].items()},
                   "genai_folder_extra_bytes": genai,
                   "passes": [{"name": r.name, "seconds": round(r.seconds, 1), "memory": r.memory} for r in log],
                   "validation": b.records.get("validation", {}).get("backends")}
            rows.append(row)
            print(json.dumps({k: row[k] for k in ("weights", "seconds", "graph_bytes", "stray")}), flush=True)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({**provenance(), "config": "qwen2-0.5b random", "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
