"""What an artifact's graph files hold: bytes per file, tensor bytes per format, duplicate tensors.

Used by the large-model tests and scripts/artifact_sizes.py. A tensor's fingerprint (dtype, sorted
dims, sum and sum of squares of its bytes) does not change when its elements are permuted, so a tied
head stored a second time as embedding.T shows up as a duplicate too.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

MIN_BYTES = 1 << 20          # tensors below 1 MiB are not checked for duplicates


def _fingerprint(raw: bytes, dims, dtype) -> tuple:
    a = np.frombuffer(raw, dtype=np.uint8)
    counts = np.bincount(a, minlength=256).astype(np.float64)
    levels = np.arange(256, dtype=np.float64)
    return str(dtype), tuple(sorted(int(d) for d in dims)), float(counts @ levels), float(counts @ levels ** 2)


def onnx_tensors(path: Path) -> list[tuple[str, int, tuple | None]]:
    """(name, bytes, fingerprint or None below MIN_BYTES) for every initializer of an ONNX graph."""
    import onnx
    from onnx import numpy_helper
    m = onnx.load(str(path), load_external_data=False)
    out, files = [], {}
    for t in m.graph.initializer:
        ext = {e.key: e.value for e in t.external_data}
        if ext:
            n = int(ext.get("length", 0))
            fp = None
            if n >= MIN_BYTES:
                f = files.setdefault(ext["location"], open(path.parent / ext["location"], "rb"))
                f.seek(int(ext.get("offset", 0)))
                fp = _fingerprint(f.read(n), t.dims, t.data_type)
            out.append((t.name, n, fp))
        else:
            raw = t.raw_data or numpy_helper.to_array(t).tobytes()
            out.append((t.name, len(raw), _fingerprint(raw, t.dims, t.data_type) if len(raw) >= MIN_BYTES else None))
    for f in files.values():
        f.close()
    return out


def openvino_tensors(xml: Path, weights: Path | None = None) -> list[tuple[str, int, tuple | None]]:
    """(name, bytes, fingerprint) for every Constant of an OpenVINO IR (weights: its .bin if not beside it)."""
    import openvino as ov
    model = ov.Core().read_model(str(xml), str(weights)) if weights else ov.Core().read_model(str(xml))
    out = []
    for op in model.get_ordered_ops():
        if op.get_type_name() != "Constant":
            continue
        n = int(op.get_byte_size())
        fp = None
        if n >= MIN_BYTES:
            fp = _fingerprint(op.get_data().tobytes(), list(op.get_output_shape(0)), op.get_element_type())
        out.append((op.get_friendly_name(), n, fp))
    return out


def duplicates(tensors) -> list[list[str]]:
    groups: dict[tuple, list[str]] = {}
    for name, _, fp in tensors:
        if fp is not None:
            groups.setdefault(fp, []).append(name)
    return [names for names in groups.values() if len(names) > 1]


def report(artifact: Path, graphs: dict) -> dict:
    """Sizes of an artifact's graphs/ folder against the tensors its graph records reference.

    -> {"files": {rel: bytes}, "graph_bytes", "formats": {fmt: {"tensor_bytes", "file_bytes", "duplicates"}},
        "stray": [files in graphs/ that no record names]}"""
    artifact = Path(artifact)
    files = {str(p.relative_to(artifact)): p.stat().st_size for p in sorted((artifact / "graphs").iterdir())
             if p.is_file()}
    for rec in graphs.values():           # the OpenVINO weights shared with the genai folder (passes/export/export_genai.py)
        if rec.get("openvino_bin"):
            files[rec["openvino_bin"]] = (artifact / rec["openvino_bin"]).stat().st_size
    named, formats = set(), {}
    for rec in graphs.values():
        for fmt, key in (("onnx", "onnx"), ("openvino", "openvino")):
            rel = rec.get(key)
            if not rel:
                continue
            side = rel + ".data" if fmt == "onnx" else (rec.get("openvino_bin") or rel[:-4] + ".bin")
            named |= {rel, side}
            tensors = (onnx_tensors(artifact / rel) if fmt == "onnx"
                       else openvino_tensors(artifact / rel, artifact / side))
            f = formats.setdefault(fmt, {"tensor_bytes": 0, "file_bytes": 0, "duplicates": []})
            f["tensor_bytes"] += sum(n for _, n, _ in tensors)
            f["file_bytes"] += files.get(rel, 0) + files.get(side, 0)
            f["duplicates"] += duplicates(tensors)
    stray = sorted(set(files) - named - {"graphs/draft_vocab.json"})
    return {"files": files, "graph_bytes": sum(files.values()), "formats": formats, "stray": stray}
