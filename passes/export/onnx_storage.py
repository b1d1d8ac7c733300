"""How exported ONNX graphs are stored: one external data file per graph, no duplicate tied head.

- `save_onnx` writes `NAME.onnx` + `NAME.onnx.data` (every tensor >= 1 KiB in the one data file), never a
  protobuf past 2 GB, and removes whatever an earlier write left beside it under those names.
- `scratch_dir` is a private folder for the exporter's own output: torch's TorchScript exporter writes
  a model past 2 GB as one external file per tensor next to the .onnx, and those files must not reach
  the artifact (they did: about 170 files, 1.9 GB, beside a 0.5B model's graph).
- `share_tied_head` removes the head's transposed copy of a tied embedding (the exporter folds
  `Transpose(embed.weight)` into a second initializer): the head becomes Reshape -> Gemm(transB=1) on
  the embedding initializer itself -> Reshape, so ONNX Runtime, the OpenVINO converter (one Constant
  feeding Gather and MatMul(transpose_b)) and NNCF (Gemm weights with transB) all see one tensor.
"""
from __future__ import annotations

import logging
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def data_name(path: Path) -> str:
    return path.name + ".data"


def save_onnx(model, path: Path) -> None:
    """Write `model` as `path` + `path.name + '.data'` (one data file, mode 0644)."""
    import onnx
    data = data_name(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for p in (path, path.with_name(data)):
        p.unlink(missing_ok=True)
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=data,
                    size_threshold=1024)
    if path.with_name(data).exists():
        path.with_name(data).chmod(0o644)   # onnx writes the data file 0600


@contextmanager
def scratch_dir(prefix: str = "accelc-onnx-"):
    """A temporary folder, removed with everything in it on exit."""
    d = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def load_onnx(path: Path, with_data: bool = True):
    import onnx
    return onnx.load(str(path), load_external_data=with_data)


def _consumers(model) -> dict[str, list]:
    out: dict[str, list] = {}
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            out.setdefault(name, []).append((node, i))
    return out


def share_tied_head(model, embedding: np.ndarray | None) -> int:
    """Replace a MatMul whose constant weight equals `embedding`.T ([C, V]) by Gemm(transB=1) on the
    embedding initializer (the one Gather reads), and drop the copy. -> number of MatMuls rewritten.

    `embedding` is the torch embedding matrix [V, C] (None: the model is not tied, nothing to do)."""
    if embedding is None:
        return 0
    import onnx
    from onnx import helper, numpy_helper
    V, C = embedding.shape
    inits = {t.name: t for t in model.graph.initializer}
    cons = _consumers(model)
    table = next((n for n, t in inits.items() if list(t.dims) == [V, C] and t.data_type == onnx.TensorProto.FLOAT
                  and any(node.op_type == "Gather" and i == 0 for node, i in cons.get(n, []))
                  and np.array_equal(numpy_helper.to_array(t), embedding)), None)
    if table is None:
        return 0
    done = 0
    for name, t in list(inits.items()):
        uses = cons.get(name, [])
        if list(t.dims) != [C, V] or not uses or any(node.op_type != "MatMul" or i != 1 for node, i in uses):
            continue
        if not np.array_equal(numpy_helper.to_array(t), embedding.T):
            continue
        for node, _ in uses:
            x, y = node.input[0], node.output[0]
            p = f"{node.name or y}.tied"
            new = [helper.make_node("Shape", [x], [p + ".shape"], name=p + ".shape", end=-1),
                   helper.make_node("Concat", [p + ".shape", p + ".v"], [p + ".out_shape"], name=p + ".cat", axis=0),
                   helper.make_node("Reshape", [x, p + ".rows"], [p + ".x2"], name=p + ".flat"),
                   helper.make_node("Gemm", [p + ".x2", table], [p + ".y2"], name=p + ".gemm", transB=1),
                   helper.make_node("Reshape", [p + ".y2", p + ".out_shape"], [y], name=p + ".unflat")]
            model.graph.initializer.extend([numpy_helper.from_array(np.array([V], np.int64), p + ".v"),
                                            numpy_helper.from_array(np.array([-1, C], np.int64), p + ".rows")])
            idx = list(model.graph.node).index(node)
            model.graph.node.remove(node)
            for k, n in enumerate(new):
                model.graph.node.insert(idx + k, n)
            done += 1
        model.graph.initializer.remove(t)
    if done:
        log.info("tied head: %d MatMul(s) now read the embedding initializer %s (transposed copy dropped)",
                 done, table)
    return done
