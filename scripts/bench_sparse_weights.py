"""Does OpenVINO's CPU sparse-weight decompression speed up a pruned artifact?

Makes a copy of ARTIFACT whose OpenVINO decoder has INT8_SYM weights (NNCF weight compression; symmetric, so
pruned weights stay exactly 0), opens it twice, the second time with the CPU property
CPU_SPARSE_WEIGHTS_DECOMPRESSION_RATE=RATE, and decodes both in lockstep (scripts/bench_decode_ab.py's
`versus`): the median ratio over rounds is with-property over without. Run it on a dense artifact too as the
control. The property only acts on CPUs with AMX-INT8 (lscpu: amx_int8).

    .venv/bin/python scripts/bench_sparse_weights.py out/dsnot6 --rate 0.5 --rounds 8
    .venv/bin/python scripts/bench_sparse_weights.py out/fp32 --rate 0.5 --rounds 6      # control
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
import types
from pathlib import Path

import openvino as ov

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_decode_ab as ab  # noqa: E402

from accelc.runtime.artifact import open_artifact  # noqa: E402

PROP = "CPU_SPARSE_WEIGHTS_DECOMPRESSION_RATE"


def int8_sym_copy(src: Path, dst: Path) -> None:
    """Copy the artifact, compress its OpenVINO decoder to INT8_SYM and update the manifest's checksums."""
    import nncf
    from nncf import CompressWeightsMode
    shutil.copytree(src, dst)
    model = nncf.compress_weights(ov.Core().read_model(str(src / "graphs/decoder.xml")), mode=CompressWeightsMode.INT8_SYM)
    ov.save_model(model, str(dst / "graphs/decoder.xml"), compress_to_fp16=False)
    manifest = json.loads((dst / "manifest.json").read_text())
    for name in ("graphs/decoder.xml", "graphs/decoder.bin"):
        data = (dst / name).read_bytes()
        manifest["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    (dst / "manifest.json").write_text(json.dumps(manifest, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("artifact")
    ap.add_argument("--rate", type=float, default=0.5, help="pack layers whose weights are at least this sparse")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--new", type=int, default=96)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt", type=int, default=3, help="index into compiler/harness/bench.py PROMPTS (3: 83 tokens, 0: 6)")
    ap.add_argument("--keep", metavar="DIR", help="also keep the INT8_SYM copy here (for bench_decode_ab.py --vs)")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="sparse-int8-") as tmp:
        art = Path(tmp) / "artifact"
        int8_sym_copy(Path(a.artifact), art)
        if a.keep:
            shutil.copytree(art, a.keep, dirs_exist_ok=True)
        plain = open_artifact(str(art), backend="openvino", device="cpu", threads=a.threads)
        original = ov.Core.compile_model

        def with_rate(self, model, device=None, config=None, **kw):
            return original(self, model, device, {**(config or {}), PROP: a.rate}, **kw)

        ov.Core.compile_model = with_rate
        try:
            sparse = open_artifact(str(art), backend="openvino", device="cpu", threads=a.threads)
        finally:
            ov.Core.compile_model = original
        print(json.dumps({"artifact": a.artifact, "weights": "INT8_SYM", PROP: a.rate}), flush=True)
        ab.versus(plain, sparse, types.SimpleNamespace(rounds=a.rounds, new=a.new, prompt=a.prompt, threads=a.threads))


if __name__ == "__main__":
    main()
