"""The native backend: every family's decoder equals torch (fp32 exactly, quantized formats against the
dequantized weights), generation equals transformers greedy, bad native files are one line, the kernel
cache rebuilds what it cannot trust."""
import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from accelc.compiler.cli import main
from accelc.models.adapter import ArchAdapter
from accelc.models.tiny import TINY_FAMILIES, tiny_model
from accelc.passes.quantization.codebook_linear import CodebookLinear, set_module
from accelc.passes.export.decoder_graph import DecoderGraph
from accelc.passes.export.export_native import decode, describe
from accelc.runtime.artifact import open_artifact
from accelc.runtime.decode import decode_one, prefill
from accelc.runtime.generate import generate
from accelc.runtime.native import jit
from accelc.runtime.native.config_check import check_config
from accelc.runtime.native import kernels
from accelc.runtime.native.kernels import int_isa
from accelc.runtime.native.model import PROBE_EVERY, WINDOW, NativeModel

from test_artifact_trust import art  # noqa: F401  (a copy of the tiny artifact, private cache)
from test_runtime_graphs import PROMPT


def _model(family, seed=0):
    model = tiny_model(family, seed=seed, sliding_window=4) if family in ("mistral", "gemma2", "gemma3_text") \
        else tiny_model(family, seed=seed)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.3 * torch.randn(p.shape, generator=g))
    return model


def _native(model, weights="fp32", threads=2, tmax=4, precision="f32", **kw):
    ad = ArchAdapter(model)
    with torch.no_grad():
        cfg, t = describe(DecoderGraph(model, ad).eval(), ad.family, weights)
    check_config(cfg, t)
    return NativeModel(cfg, t, threads, tmax=tmax, precision=precision, **kw), cfg, t


def _run_all(m, ids):
    """Prefill (in chunks of tmax) then token-by-token decode of the same ids: both logits [T, V]."""
    full = m.step(ids, np.arange(len(ids)), 0, last_only=False).copy()
    steps = np.stack([m.step(ids[i:i + 1], np.array([i]), i, last_only=True)[0].copy() for i in range(len(ids))])
    return full, steps


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_fp32_decoder_equals_torch(family):
    model = _model(family)
    ids = torch.randint(0, 256, (1, 11), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = model(ids).logits[0].numpy()
    m, _, _ = _native(model)
    try:
        full, steps = _run_all(m, ids[0].numpy())
    finally:
        m.close()
    np.testing.assert_allclose(full, ref, atol=1e-4)
    np.testing.assert_allclose(steps, ref, atol=1e-4)


def _with_weights(model, cfg, t):
    """The torch model with every linear (and the embedding) replaced by what the native tensors decode to."""
    ad = ArchAdapter(model)
    with torch.no_grad():
        for j, L in enumerate(cfg["layers"]):
            mods = {**ad.attn_proj(j), **ad.mlp_proj(j)}
            for p in ("q", "k", "v", "o", "gate", "up", "down"):
                rec = L[p]
                stored = {k.split(".")[-1]: v for k, v in t.items() if k.rsplit(".", 1)[0] == rec["name"]}
                mods[p].weight.copy_(torch.from_numpy(decode(stored, rec["format"], rec.get("group"))))
        e = cfg["embed"]
        stored = {k.split(".")[-1]: v for k, v in t.items() if k.rsplit(".", 1)[0] == e["name"]}
        ad.embed.weight.copy_(torch.from_numpy(decode(stored, e["format"])))
    return model


@pytest.mark.parametrize("weights", ["fp16", "int8", "int4"])
@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma3_text"])
def test_quantized_formats_equal_their_dequantized_weights(family, weights):
    model = _model(family)
    ids = torch.randint(0, 256, (1, 9), generator=torch.Generator().manual_seed(6))
    m, cfg, t = _native(model, weights, int8_act=False)          # float kernels: exact up to rounding
    try:
        full, steps = _run_all(m, ids[0].numpy())
    finally:
        m.close()
    with torch.no_grad():
        ref = _with_weights(model, cfg, t)(ids).logits[0].numpy()
    np.testing.assert_allclose(full, ref, atol=2e-4)
    np.testing.assert_allclose(steps, ref, atol=2e-4)
    if weights != "fp16" and int_isa(jit.host_target().features.split(",")):
        m2 = NativeModel(cfg, t, 2, tmax=4, int8_act=True, precision="f32")        # int8 activations: close
        try:
            full2, steps2 = _run_all(m2, ids[0].numpy())
        finally:
            m2.close()
        assert m2.int8_activations
        assert kernels.vnni_block(*[cfg["layers"][0]["q"].get(k) for k in ("format",)],
                                  cfg["hidden"], cfg["layers"][0]["q"].get("group", 0)) is not None
        assert np.linalg.norm(full2 - ref) < 0.03 * np.linalg.norm(ref)    # relative error of the logits
        # a token's logits do not depend on how many tokens share its step (prefill chunks of 4 vs one at a
        # time): speculative verification reproduces plain decoding bit for bit
        np.testing.assert_array_equal(full2, steps2)


@pytest.mark.parametrize("scheme", [(2, 8), (1, 8), (2, 4)])      # (codebooks M, group G), 8-bit codes
def test_codebook_layers_equal_torch(scheme):
    books, group = scheme
    model = _model("llama")
    ad = ArchAdapter(model)
    g = torch.Generator().manual_seed(2)
    real_names = {id(m): n for n, m in model.named_modules()}
    for lin in ad.linears(include_head=False).values():
        name = real_names[id(lin)]
        out_f, in_f = lin.weight.shape
        codes = torch.randint(0, 256, (out_f, in_f // group, books), generator=g, dtype=torch.int64).to(torch.uint8)
        cb = 0.1 * torch.randn(books, 256, group, generator=g)
        q = CodebookLinear(codes, cb, torch.rand(out_f, 1, generator=g) + 0.5)
        q.pack()
        set_module(model, name, q)
    ids = torch.randint(0, 256, (1, 7), generator=torch.Generator().manual_seed(7))
    m, cfg, t = _native(model, int8_act=False)              # float head: exact against torch
    assert cfg["layers"][0]["q"]["format"] == "cb" and cfg["embed"]["format"] == "q8a"
    try:
        full, steps = _run_all(m, ids[0].numpy())
    finally:
        m.close()
    with torch.no_grad():
        e = cfg["embed"]
        stored = {k.split(".")[-1]: v for k, v in t.items() if k.rsplit(".", 1)[0] == e["name"]}
        ad.embed.weight.copy_(torch.from_numpy(decode(stored, "q8a")))     # the low-bit artifact's int8 embedding
        ref = model(ids).logits[0].numpy()
    tol = 1e-4 * max(1.0, np.abs(ref).max())
    np.testing.assert_allclose(full, ref, atol=tol)
    np.testing.assert_allclose(steps, ref, atol=tol)
    np.testing.assert_array_equal(full, steps)      # chunks of 4 tokens = one at a time: lossless verification


def test_generation_equals_transformers_greedy(tiny_artifact, torch_greedy):
    art = open_artifact(tiny_artifact, backend="native", precision="f32")
    assert art.choice.backend == "native"
    ref = torch_greedy(PROMPT, 24)
    r = generate(art, PROMPT, 24)
    assert r.tokens == ref and r.stop_reason == "length"


def test_rollback_and_explicit_cache_agree_with_onnxruntime(tiny_artifact):
    nat = open_artifact(tiny_artifact, backend="native", full_logits=True, precision="f32")
    ort = open_artifact(tiny_artifact, backend="onnxruntime")
    a, b = nat.new_state(40), ort.new_state(40)
    np.testing.assert_allclose(prefill(a, PROMPT, all_logits=True), prefill(b, PROMPT, all_logits=True), atol=1e-4)
    for tok in (5, 77, 200):
        np.testing.assert_allclose(decode_one(a, tok), decode_one(b, tok), atol=1e-4)
    a.cache.rollback(len(PROMPT) + 1)
    fresh = prefill(ort.new_state(40), PROMPT + [5, 77])
    np.testing.assert_allclose(decode_one(a, 77), fresh, atol=1e-4)
    # the explicit-cache call (validation, speculative runners) copies the caller's cache in
    runner = nat.runners["decoder"]
    ids = np.array([PROMPT], dtype=np.int64)
    logits, new_kv = runner.forward(ids, np.arange(len(PROMPT))[None], np.ones((1, len(PROMPT)), np.int64),
                                    [np.zeros((1, 0, nat.kv_heads, nat.head_dim), np.float32)] * (2 * nat.layers))
    logits2, _ = runner.forward(np.array([[5]]), np.array([[len(PROMPT)]]), np.ones((1, len(PROMPT) + 1), np.int64),
                                new_kv)
    ref = prefill(ort.new_state(40), PROMPT + [5], all_logits=True)
    np.testing.assert_allclose(logits2[0, -1], ref[-1], atol=1e-4)


def _rewrite_config(art, fn):
    import hashlib
    p = art / "native" / "model.json"
    cfg = json.loads(p.read_text())
    fn(cfg)
    p.write_text(json.dumps(cfg))
    m = json.loads((art / "manifest.json").read_text())
    m["files"]["native/model.json"] = {"sha256": hashlib.sha256(p.read_bytes()).hexdigest(), "bytes": p.stat().st_size}
    (art / "manifest.json").write_text(json.dumps(m))


@pytest.mark.parametrize("edit,fragment", [
    (lambda c: c.update(hidden=128), "shape"),
    (lambda c: c["layers"][1]["q"].update(format="q3x"), "weight format"),
    (lambda c: c["layers"][0]["gate"].update(shape=[10 ** 6, 64]), "native"),
    (lambda c: c.update(heads=3), "geometry"),
    (lambda c: c["rope"]["default"].update(inv_freq="layers.0.q.w"), "expected float32[8]"),
    (lambda c: c.update(activation="relu6"), "activation"),
])
def test_bad_native_config_is_one_line(art, capsys, edit, fragment):
    _rewrite_config(art, edit)
    code = main(["run", str(art), "--prompt", "hi", "--max-new-tokens", "2", "--backend", "native"])
    err = capsys.readouterr().err
    lines = [ln for ln in err.strip().splitlines() if ln and not ln.startswith("accelc: native on")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert fragment in lines[0], lines[0]


def test_corrupt_kernel_cache_entry_is_rebuilt(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("ACCELC_CACHE", str(tmp_path))
    m, cfg, t = _native(_model("llama"), threads=1)
    m.close()
    entry = next((tmp_path / "native").glob("*.o"))
    blob = bytearray(entry.read_bytes())
    blob[100] ^= 0xFF
    entry.write_bytes(bytes(blob))
    with caplog.at_level(logging.WARNING):
        m2 = NativeModel(cfg, t, 1, tmax=4, precision="f32")
    try:
        assert not m2.compiled.cached and "corrupt" in caplog.text
        out = m2.step(np.array([1, 2, 3]), np.arange(3), 0, last_only=True)
        assert np.isfinite(out).all()
    finally:
        m2.close()
    m3 = NativeModel(cfg, t, 1, tmax=4, precision="f32")              # the rebuilt entry is trusted again
    assert m3.compiled.cached
    m3.close()


def test_unwritable_cache_compiles_in_memory(tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("ACCELC_CACHE", str(blocker))
    with caplog.at_level(logging.WARNING):
        m, _, _ = _native(_model("llama"), threads=1)
    try:
        assert "not writable" in caplog.text
        assert np.isfinite(m.step(np.array([4]), np.array([0]), 0, last_only=True)).all()
    finally:
        m.close()


def test_generic_cpu_path_gives_the_same_logits(monkeypatch, tmp_path):
    monkeypatch.setenv("ACCELC_CACHE", str(tmp_path))
    model = _model("qwen2")
    ids = np.array([3, 1, 4, 1, 5, 9, 2, 6])
    m, _, _ = _native(model, threads=1)
    host = m.step(ids, np.arange(8), 0, last_only=False).copy()
    m.close()
    monkeypatch.setenv("ACCELC_NATIVE_CPU", "generic")
    m, _, _ = _native(model, threads=1)
    assert m.compiled.target.generic
    np.testing.assert_allclose(m.step(ids, np.arange(8), 0, last_only=False), host, atol=1e-4)
    m.close()


def test_bf16_policy_rounds_weights_and_stays_close():
    model = _model("gemma3_text")
    ids = torch.randint(0, 256, (1, 9), generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        ref = model(ids).logits[0].numpy()
    m, cfg, t = _native(model, bf16=True)
    try:
        assert m.bf16_weights and m.cfg["layers"][0]["q"]["format"] == "bf16" and cfg["layers"][0]["q"]["format"] == "f32"
        full, steps = _run_all(m, ids[0].numpy())
    finally:
        m.close()
    np.testing.assert_allclose(full, steps, atol=1e-5)
    err = np.linalg.norm(full - ref) / np.linalg.norm(ref)
    assert 1e-5 < err < 0.02          # rounded (not exact), but close


def test_dropped_weight_pages_read_back_the_same(tmp_path):
    """drop_pages (used once float32 weights are converted to bf16) only advises the OS: the mapped tensor still
    reads the file's bytes, and only whole pages inside the tensor are advised."""
    import mmap
    from safetensors.numpy import save_file
    from accelc.runtime.native.weights import drop_pages, map_safetensors
    big = np.random.default_rng(0).standard_normal((64, 1024)).astype(np.float32)     # 256 KiB
    small = np.arange(7, dtype=np.float32)
    save_file({"big": big, "small": small}, str(tmp_path / "w.safetensors"))
    t = map_safetensors(tmp_path / "w.safetensors")
    assert float(t["big"].sum()) == float(big.sum())                  # pages resident now
    # a small tensor holds no whole page; arrays that are not mapped (numpy or torch) are skipped
    def resident():         # KiB of the file's mapping in memory (Linux; None elsewhere)
        smaps, kib, ours = Path("/proc/self/smaps"), 0, False
        if not smaps.exists():
            return None
        for line in smaps.read_text().splitlines():
            if re.match(r"[0-9a-f]+-[0-9a-f]+ ", line):       # a mapping's header line
                ours = line.rstrip().endswith("w.safetensors")
            elif ours and line.startswith("Rss:"):
                kib += int(line.split()[1])
        return kib
    before = resident()
    n = drop_pages([t["big"], t["small"], np.ones(3), torch.ones(2)])
    if hasattr(mmap, "MADV_DONTNEED"):
        assert big.nbytes - 2 * mmap.PAGESIZE <= n <= big.nbytes and n % mmap.PAGESIZE == 0
        if before is not None:          # the pages really left the process
            assert before - resident() >= (n >> 10) - 8
    np.testing.assert_array_equal(t["big"], big)
    np.testing.assert_array_equal(t["small"], small)


def test_native_is_chosen_first_only_where_it_leads():
    from accelc.runtime.device import cpu_order
    rec = lambda *f, **kw: {"records": {"native": {"linear_formats": list(f), **kw}}}
    zen5 = ["+avx2", "+avx512f", "+avx512vnni", "+avx512bf16"]
    zen2 = ["+avx2"]
    assert cpu_order(rec("cb"), zen2)[0] == "native"                      # OpenVINO would expand codebooks
    assert cpu_order(rec("q8a"), zen5)[0] == "native" and cpu_order(rec("q4s"), zen5)[0] == "native"
    assert cpu_order(rec("q8a"), zen2)[0] == "native" and cpu_order(rec("q4s"), zen2)[0] == "native"   # AVX2 dot products
    assert cpu_order(rec("q2s"), zen2)[0] == "native" and cpu_order(rec("q3s"), zen5)[0] == "native"
    assert cpu_order(rec("q3s"), ["+sse4.2"])[0] == "native"               # OpenVINO would expand int3 to float32
    assert cpu_order(rec("q8a"), ["+sse4.2"])[0] == "openvino"             # no AVX2: not measured, OpenVINO first
    assert cpu_order(rec("q2s"), ["+sse4.2"])[0] == "openvino"
    assert cpu_order(rec("f32"), zen5)[0] == "openvino"                   # exact f32 stays the default
    assert cpu_order(rec("f16"), zen5)[0] == "openvino" and "native" in cpu_order(rec("f16"), zen5)
    assert cpu_order({"records": {}}, zen5)[0] == "openvino"


def test_oversubscribed_threads_agree():
    """More threads than cores (8 on a CI machine's 2-4): barrier waiters outlast their spins and yield; the logits
    still equal the one-thread model's."""
    model = _model("llama")
    ids = np.array([3, 1, 4, 1, 5, 9, 2, 6, 5, 3])
    one, _, _ = _native(model, threads=1)
    ref = one.step(ids, np.arange(10), 0, last_only=False).copy()
    one.close()
    many, _, _ = _native(model, threads=8)
    try:
        for _ in range(5):
            np.testing.assert_allclose(many.step(ids, np.arange(10), 0, last_only=False), ref, atol=1e-5)
    finally:
        many.close()


def test_fewer_active_threads_give_the_same_logits_and_slow_steps_switch_to_one():
    model = _model("llama")
    ids = np.array([3, 1, 4, 1, 5, 9, 2, 6])
    m, _, _ = _native(model, threads=2)
    try:
        ref = m.step(ids, np.arange(8), 0, last_only=False).copy()
        m.set_threads(1)
        np.testing.assert_array_equal(m.step(ids, np.arange(8), 0, last_only=False), ref)
        m.set_threads(2)
        m._best = {2: 1e-4}                     # as if all threads once ran a step in 0.1 ms
        for _ in range(WINDOW):
            m._adapt(1e-2)                      # then steps 100x slower: a busy machine
        assert m.active == 1
        for _ in range(PROBE_EVERY):
            m._adapt(1e-3)
        assert m.active == 2                    # probes all threads again
        np.testing.assert_array_equal(m.step(ids, np.arange(8), 0, last_only=False), ref)
    finally:
        m.close()


def test_thread_count_changing_every_step_keeps_lock_step():
    """set_threads between steps (the adaptive rule does it on a busy machine): each step's workers are those
    the job was posted for. A worker that read the count apart from the job once joined the next step early,
    out of lock step: wrong logits, then a deadlock or a crash. 4 threads on fewer cores preempt often."""
    import threading
    import time
    model = _model("llama")
    m, _, _ = _native(model, threads=4)
    m.adaptive = False
    ids = np.array([3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8])
    result = {}

    def decode(toggle):
        rows = []
        for p in range(len(ids)):
            m.set_threads(1 + p % 4 if toggle else 4)
            rows.append(m.step(ids[p:p + 1], np.array([p]), p, last_only=True)[0].copy())
        return np.stack(rows)

    def loop():
        ref, runs, start = decode(False), 0, time.monotonic()
        while (runs < 20 or time.monotonic() < start + 3) and time.monotonic() < start + 40:
            result.setdefault("bad", 0)
            result["bad"] += not np.array_equal(decode(True), ref)
            runs += 1
        result["runs"] = runs

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    t.join(timeout=90)
    assert not t.is_alive(), "native threads deadlocked"
    assert result["runs"] >= 1 and result["bad"] == 0, result
    m.close()


_CHILD = """
import json, sys
import numpy as np
from accelc.runtime.native.model import NativeModel
from accelc.runtime.native import objload
cfg = json.load(open(sys.argv[1]))
t = dict(np.load(sys.argv[2], allow_pickle=False))
m = NativeModel(cfg, t, 1, tmax=4, precision="f32")
assert isinstance(m.compiled.engine, objload.Loaded) and m.compiled.cached, type(m.compiled.engine)
assert "llvmlite.binding" not in sys.modules
np.save(sys.argv[3], m.step(np.array([3, 1, 4, 1, 5]), np.arange(5), 0, last_only=False))
m.close()
"""


def test_cached_kernels_load_without_llvm(tmp_path, monkeypatch):
    """A second process opening the same model finds its recipe and loads the cached object with objload.py:
    no LLVM in the process, the same logits bit for bit."""
    import subprocess
    import sys
    monkeypatch.setenv("ACCELC_CACHE", str(tmp_path / "cache"))
    m, cfg, t = _native(_model("qwen2"), threads=1)
    try:
        ref = m.step(np.array([3, 1, 4, 1, 5]), np.arange(5), 0, last_only=False).copy()
    finally:
        m.close()
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    np.savez(tmp_path / "t.npz", **t)
    (tmp_path / "child.py").write_text(_CHILD)
    r = subprocess.run([sys.executable, str(tmp_path / "child.py"), str(tmp_path / "cfg.json"),
                        str(tmp_path / "t.npz"), str(tmp_path / "out.npy")], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), ref)


def test_recipe_key_follows_what_shapes_the_code(monkeypatch, tmp_path):
    monkeypatch.setenv("ACCELC_CACHE", str(tmp_path))
    base = jit.recipe_key("model", {"hidden": 8}, 4, None)
    assert jit.recipe_key("model", {"hidden": 8}, 4, None) == base
    assert jit.recipe_key("model", {"hidden": 16}, 4, None) != base
    assert jit.recipe_key("model", {"hidden": 8}, 8, None) != base
    monkeypatch.setenv("ACCELC_NATIVE_PERFMAP", "1")          # steers the run, not the code: same object
    monkeypatch.setenv("ACCELC_NATIVE_ADAPT", "0")
    assert jit.recipe_key("model", {"hidden": 8}, 4, None) == base
    monkeypatch.setenv("ACCELC_NATIVE_PREFETCH", "0")
    assert jit.recipe_key("model", {"hidden": 8}, 4, None) != base


def test_object_loader_refuses_what_it_cannot_place(tmp_path, monkeypatch):
    import struct
    from accelc.runtime.native import objload
    monkeypatch.setenv("ACCELC_CACHE", str(tmp_path))
    with pytest.raises(objload.LoadError):
        objload.load(b"not an object at all" * 4, ["f"])
    m = __import__("llvmlite.ir", fromlist=["x"]).Module("t")
    fn = kernels.gated_act(m, "silu", 24)
    fn.linkage = "external"
    c = jit.compile_ir(str(m), [fn.name])
    obj = jit._ObjectCache(c.key).load()
    loaded = objload.load(obj, [fn.name])             # loads, and computes what the LLVM-loaded code does
    gu = np.random.default_rng(0).standard_normal((2, 48)).astype(np.float32)
    import ctypes
    proto = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64)
    outs = []
    for addr in (c.addresses[fn.name], loaded.addresses[fn.name]):
        y = np.zeros((2, 24), np.float32)
        proto(addr)(gu.ctypes.data, y.ctypes.data, 2, 0, 24)
        outs.append(y)
    np.testing.assert_array_equal(*outs)
    with pytest.raises(objload.LoadError):
        objload.load(obj, ["no_such_function"])
    # an unknown relocation type in the first relocation entry: refused, not guessed
    secs = objload._sections(obj)
    rela = next(s for s in secs if s.type == objload.SHT_RELA and s.size)
    bad = bytearray(obj)
    off, info = struct.unpack_from("<QQ", bad, rela.offset)
    struct.pack_into("<Q", bad, rela.offset + 8, (info >> 32) << 32 | 37)
    with pytest.raises(objload.LoadError, match="relocation type 37"):
        objload.load(bytes(bad), [fn.name])
