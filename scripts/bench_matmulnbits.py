"""ONNX Runtime's kernels for the int graphs' pieces, one node at a time (docs/passes/quantization.md, "pv-int").

    .venv/bin/python scripts/bench_matmulnbits.py --out docs/passes/results/matmulnbits_DATE.json

  - MatMulNBits of a K x N weight at 2, 4 and 8 bits (blocks of 64, random codes) at every accuracy_level 0-4:
    milliseconds per call for one token (x [1, K]) and the relative error against the float product;
  - the int8 embedding as NNCF's ONNX backend writes it (DequantizeLinear of the whole [V, C] table, per-row scale
    and zero point), feeding a one-row Gather and feeding the tied head's Gemm, against the head as an 8-bit
    MatMulNBits (the per-row scale and zero point repeated in every block) at accuracy levels 0 and 4.
Threads: --threads (default 1). Writes raw JSON with machine, date, commit and command line (scripts/provenance.py).
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from provenance import emit


def _model(nodes, inputs, outputs, inits):
    from onnx import helper, numpy_helper
    graph = helper.make_graph(nodes, "g", inputs, outputs, [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])


def _time(model, feeds: dict, threads: int, reps: int) -> tuple[float, np.ndarray]:
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    y = sess.run(None, feeds)[0]
    t = time.perf_counter()
    for _ in range(reps):
        sess.run(None, feeds)
    return (time.perf_counter() - t) / reps * 1e3, y


def matmulnbits(k: int, n: int, threads: int, reps: int) -> list[dict]:
    from onnx import TensorProto, helper
    from accelc.passes.export.onnx_int import pack_matmulnbits
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, k)).astype(np.float32)
    rows, bs = [], 64
    for bits in (2, 4, 8):
        u = rng.integers(0, 1 << bits, (n, k // bs, bs))
        s = (rng.random((n, k // bs)) * 0.1 + 0.01).astype(np.float32)
        ref = x @ ((u - (1 << (bits - 1))) * s[:, :, None]).reshape(n, k).T
        for level in range(5):
            node = helper.make_node("MatMulNBits", ["x", "w", "s"], ["y"], domain="com.microsoft", K=k, N=n, bits=bits,
                                    block_size=bs, accuracy_level=level)
            m = _model([node], [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, k])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])], {"w": pack_matmulnbits(u - (1 << (bits - 1)), bits), "s": s})
            ms, y = _time(m, {"x": x}, threads, reps)
            rows.append({"bits": bits, "accuracy_level": level, "k": k, "n": n, "ms": round(ms, 3),
                         "rel_error": float(np.abs(y - ref).max() / np.abs(ref).max())})
            print(rows[-1], flush=True)
    return rows


def embedding(vocab: int, width: int, threads: int, reps: int) -> list[dict]:
    from onnx import TensorProto, helper
    rng = np.random.default_rng(1)
    q = rng.integers(0, 256, (vocab, width)).astype(np.uint8)
    s = (rng.random(vocab) * 0.01 + 0.001).astype(np.float32)
    z = rng.integers(100, 156, vocab).astype(np.uint8)
    table = (q.astype(np.float32) - z[:, None]) * s[:, None]
    x = rng.standard_normal((1, width)).astype(np.float32)
    ids = np.array([5], np.int64)
    dq = helper.make_node("DequantizeLinear", ["q", "s", "z"], ["t"], axis=0)
    f32 = TensorProto.FLOAT
    rows = []
    m = _model([dq, helper.make_node("Gather", ["t", "ids"], ["y"], axis=0)],
               [helper.make_tensor_value_info("ids", TensorProto.INT64, [1])],
               [helper.make_tensor_value_info("y", f32, [1, width])], {"q": q, "s": s, "z": z})
    ms, _ = _time(m, {"ids": ids}, threads, reps)
    rows.append({"piece": "DequantizeLinear(table) -> Gather one row", "ms": round(ms, 3)})
    ref = x @ table.T
    m = _model([dq, helper.make_node("Gemm", ["x", "t"], ["y"], transB=1)],
               [helper.make_tensor_value_info("x", f32, [1, width])],
               [helper.make_tensor_value_info("y", f32, [1, vocab])], {"q": q, "s": s, "z": z})
    ms, y = _time(m, {"x": x}, threads, reps)
    rows.append({"piece": "DequantizeLinear(table) -> Gemm head", "ms": round(ms, 3),
                 "rel_error": float(np.abs(y - ref).max() / np.abs(ref).max())})
    bs = 64 if width % 64 == 0 else 32
    nb = width // bs
    for level in (0, 4):
        node = helper.make_node("MatMulNBits", ["x", "w", "s", "z"], ["y"], domain="com.microsoft", K=width, N=vocab,
                                bits=8, block_size=bs, accuracy_level=level)
        m = _model([node], [helper.make_tensor_value_info("x", f32, [1, width])],
                   [helper.make_tensor_value_info("y", f32, [1, vocab])],
                   {"w": q.reshape(vocab, nb, bs), "s": np.repeat(s[:, None], nb, 1), "z": np.repeat(z[:, None], nb, 1)})
        ms, y = _time(m, {"x": x}, threads, reps)
        rows.append({"piece": f"MatMulNBits 8-bit head, accuracy_level {level}", "ms": round(ms, 3),
                     "rel_error": float(np.abs(y - ref).max() / np.abs(ref).max())})
    for r in rows:
        print(r, flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--k", type=int, default=8192)
    ap.add_argument("--n", type=int, default=8192)
    ap.add_argument("--vocab", type=int, default=49152)
    ap.add_argument("--width", type=int, default=576)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    import onnxruntime
    emit({"onnxruntime": onnxruntime.__version__, "threads": a.threads, "reps": a.reps,
          "matmulnbits": matmulnbits(a.k, a.n, a.threads, a.reps),
          "embedding": embedding(a.vocab, a.width, a.threads, a.reps)}, a.out)


if __name__ == "__main__":
    main()
