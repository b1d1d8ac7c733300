"""NNCF baseline artifacts for the pv-int table (docs/passes/quantization.md): an fp32 accelc artifact's OpenVINO
decoder compressed by NNCF itself, data-free or data-aware, written as a new artifact the runtime opens like any other.

    .venv/bin/python scripts/nncf_baseline.py out/s-fp32 out/nncf-int4 --bits 4
    .venv/bin/python scripts/nncf_baseline.py out/s-fp32 out/nncf-int4-awq --bits 4 --awq --scale-estimation
    .venv/bin/python scripts/nncf_baseline.py out/s-fp32 out/nncf-int2-gptq --bits 2 --gptq

NNCF's modes INT4_SYM / INT3_SYM / INT2_SYM with groups of --group (default 64) on every decoder linear
(ratio 1.0); the embedding and tied head stay at NNCF's backup precision (INT8_ASYM per row), as in accelc's
int artifacts. Data-aware options take accelc's calibration windows (Brown calibration split, `--samples`
windows of `--seqlen` tokens, the same defaults as `gptq-int`/`pv-int`), fed to the decoder graph as prefill calls
with an empty cache. The source must be an fp32 artifact with OpenVINO graphs (`--formats openvino`).
The new artifact's manifest records the NNCF call and its seconds under records.quantization.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from provenance import provenance


def dataset(art: Path, model, samples: int, seqlen: int, calib: str | None):
    import nncf
    from transformers import AutoTokenizer
    from accelc.models.corpus import calibration_batches
    tok = AutoTokenizer.from_pretrained(str(art / "tokenizer"))
    ids = calibration_batches(tok, n_samples=samples, seq_len=seqlen, seed=0, path=calib).numpy()
    pasts = {}
    for inp in model.inputs:
        name = inp.get_any_name()
        if name.startswith("past_"):
            shape = [1, 0] + [d.get_length() for d in list(inp.get_partial_shape())[2:]]
            pasts[name] = np.zeros(shape, np.float32)

    def item(row):
        t = row[None].astype(np.int64)
        return {"input_ids": t, "position_ids": np.arange(t.shape[1], dtype=np.int64)[None],
                "attention_mask": np.ones_like(t), **pasts}
    return nncf.Dataset(list(ids), item)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("source", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--bits", type=int, choices=(2, 3, 4), required=True)
    p.add_argument("--group", type=int, default=64)
    p.add_argument("--awq", action="store_true")
    p.add_argument("--scale-estimation", action="store_true")
    p.add_argument("--gptq", action="store_true")
    p.add_argument("--samples", type=int, default=32)
    p.add_argument("--seqlen", type=int, default=256)
    p.add_argument("--calib")
    p.add_argument("--force", action="store_true")
    a = p.parse_args()
    import nncf
    import openvino as ov
    from nncf import CompressWeightsMode
    from accelc.compiler.artifact import publish, read_manifest, staging, verify
    manifest = read_manifest(a.source)
    verify(a.source, manifest)
    if (manifest.get("options") or {}).get("weights", "fp32") != "fp32" or (manifest.get("records") or {}).get("quantization"):
        print(f"{a.source}: not an fp32 artifact", file=sys.stderr)
        return 2
    graphs = manifest["graphs"]
    if set(graphs) != {"decoder"} or "openvino" not in graphs["decoder"]:
        print(f"{a.source}: needs one dynamic 'decoder' graph with an OpenVINO IR", file=sys.stderr)
        return 2
    mode = {4: CompressWeightsMode.INT4_SYM, 3: CompressWeightsMode.INT3_SYM, 2: CompressWeightsMode.INT2_SYM}[a.bits]
    model = ov.Core().read_model(str(a.source / graphs["decoder"]["openvino"]))
    data_aware = a.awq or a.scale_estimation or a.gptq
    kw = dict(mode=mode, group_size=a.group, ratio=1.0)
    if data_aware:
        kw.update(dataset=dataset(a.source, model, a.samples, a.seqlen, a.calib), awq=a.awq,
                  scale_estimation=a.scale_estimation, gptq=a.gptq, subset_size=a.samples)
    t0 = time.perf_counter()
    model = nncf.compress_weights(model, **kw)
    seconds = round(time.perf_counter() - t0, 1)
    if a.out.exists() and not a.force:
        print(f"{a.out} exists (use --force)", file=sys.stderr)
        return 2
    with staging(a.out) as stage:
        shutil.copytree(a.source / "tokenizer", stage / "tokenizer")
        (stage / "graphs").mkdir()
        ov.save_model(model, str(stage / "graphs" / "decoder.xml"), compress_to_fp16=False)
        rec = {k: v for k, v in manifest.items() if k not in ("files", "format", "format_version", "created")}
        rec["graphs"] = {"decoder": {k: v for k, v in graphs["decoder"].items() if k not in ("onnx",)}}
        rec["graphs"]["decoder"]["openvino"] = "graphs/decoder.xml"
        name = f"nncf int{a.bits}_sym g{a.group}" + "".join(f" +{n}" for n, on in (("awq", a.awq), (
            "scale_estimation", a.scale_estimation), ("gptq", a.gptq)) if on)
        rec.setdefault("records", {})
        rec["records"] = {k: v for k, v in rec["records"].items() if k not in ("native",)}
        rec["records"]["quantization"] = {"method": name, "int": {"bits": a.bits, "group": a.group},
                                          "nncf": {"version": nncf.__version__, "data_aware": data_aware,
                                                   "samples": a.samples if data_aware else 0,
                                                   "seqlen": a.seqlen if data_aware else 0},
                                          "seconds": {"nncf": seconds}, "derived_from": str(a.source),
                                          "provenance": provenance()}
        from accelc.compiler.artifact import write_manifest
        write_manifest(stage, rec)
        publish(stage, a.out, force=a.force)
    print(json.dumps({"out": str(a.out), "method": name, "nncf_s": seconds}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
