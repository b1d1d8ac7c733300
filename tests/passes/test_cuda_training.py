"""Training on a CUDA device (issues 18 and 19: "faster on a lent GPU"): encoder-decoder adaptation and EAGLE
training give the CPU's losses and weights on a GPU (float32), resume across devices, and leave every module on the
CPU afterwards; a compile with device=cuda makes a validated artifact. Skipped where torch sees no CUDA device (CI);
run on a lent GPU machine by scripts/gpu_run.sh tests."""
import copy

import pytest
import torch

from accelc.models.tiny import tiny_model
from accelc.passes.encdec.model import convert
from accelc.passes.encdec.options import EncDecConfig
from accelc.passes.export.decoder_graph import DecoderGraph

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (a lent GPU)")
CUDA = torch.device("cuda")


@pytest.fixture(autouse=True)
def exact_float32():
    """float32 matmuls on the GPU without TF32, so the CPU and GPU runs differ only by summation order."""
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = old


def _encdec(seed=0):
    src = tiny_model("llama", seed=seed, initializer_range=0.2, num_hidden_layers=4)
    teacher = DecoderGraph(copy.deepcopy(src).eval()).eval()
    return convert(src, decoder_layers=2), teacher


def _on_cpu(module) -> bool:
    return all(t.device.type == "cpu" for t in (*module.parameters(), *module.buffers()))


CFG = EncDecConfig(steps=6, seq_len=48, min_prefix=8, min_target=8, batch=4, lr=3e-3, kd=0.5)
STREAM = torch.randint(3, 256, (2000,), generator=torch.Generator().manual_seed(0))


def test_encdec_adaptation_on_cuda_equals_cpu():
    from accelc.passes.encdec.train import adapt
    runs = {}
    for dev in ("cpu", "cuda"):
        ed, teacher = _encdec()
        out = adapt(ed, teacher, STREAM, CFG, device=dev)
        assert _on_cpu(ed) and _on_cpu(teacher)
        runs[dev] = (out, ed.decoder.model.layers[1].mlp.up_proj.weight.detach().clone())
    (cpu, w_cpu), (gpu, w_gpu) = runs["cpu"], runs["cuda"]
    assert gpu["device"].startswith("cuda") and cpu["device"] == "cpu" and gpu["steps"] == cpu["steps"] == 6
    assert abs(gpu["loss"]["last"] - cpu["loss"]["last"]) < 1e-3 * abs(cpu["loss"]["last"])
    torch.testing.assert_close(w_gpu, w_cpu, atol=1e-4, rtol=1e-3)


def _interrupted_then_resumed(path, first: str, monkeypatch) -> torch.Tensor:
    """3 steps on `first`, stopped there, then resumed from the state saved at `path` on the CPU up to 6."""
    import accelc.passes.encdec.train as train
    real, calls = train.apply_step, []

    def stop_after_three(*a, **k):
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*a, **k)
    ed, teacher = _encdec()
    with monkeypatch.context() as m:
        m.setattr(train, "apply_step", stop_after_three)
        with pytest.raises(KeyboardInterrupt):
            train.adapt(ed, teacher, STREAM, CFG, resume=path, device=first, save_s=0.0)
    assert _on_cpu(ed) and _on_cpu(teacher)
    ed, teacher = _encdec()
    out = train.adapt(ed, teacher, STREAM, CFG, resume=path, device="cpu")
    assert out["resumed_at"] == 3 and out["steps"] == 6
    return ed.decoder.model.layers[0].self_attn.q_proj.weight.detach().clone()


def test_encdec_adaptation_resumes_across_devices(tmp_path, monkeypatch):
    """Stopped after 3 steps on the GPU and resumed on the CPU: the weights of the same run done on the CPU alone
    (the resume file holds the weights and AdamW's moments, whatever device wrote them)."""
    want = _interrupted_then_resumed(tmp_path / "a.safetensors", "cpu", monkeypatch)
    got = _interrupted_then_resumed(tmp_path / "b.safetensors", "cuda", monkeypatch)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-3)


def test_encdec_bf16_on_cuda_lowers_the_loss():
    from accelc.passes.encdec.train import _step_loss, adapt
    ed, teacher = _encdec()
    x = STREAM[:96].view(2, 48)
    cfg = EncDecConfig(**{**CFG.__dict__, "steps": 30})
    with torch.no_grad():
        before = float(_step_loss(ed, teacher, x, 20, cfg, False, False))
    out = adapt(ed, teacher, STREAM, cfg, bf16=True, device="cuda")
    with torch.no_grad():
        after = float(_step_loss(ed, teacher, x, 20, cfg, False, False))
    assert out["steps"] == 30 and after < 0.9 * before


def test_eagle_states_and_training_on_cuda_equal_cpu():
    from accelc.models.adapter import ArchAdapter
    from accelc.passes.drafting.eagle_model import EagleGraph
    from accelc.passes.drafting.eagle_train import target_features, train_eagle
    m = tiny_model("llama", seed=0, vocab_size=257, num_hidden_layers=3, initializer_range=0.1)
    ad = ArchAdapter(m)
    windows = torch.randint(0, 257, (16, 24), generator=torch.Generator().manual_seed(1))
    f_cpu = target_features(m, ad, windows)
    f_gpu = target_features(m, ad, windows, chunk=8, device="cuda")
    assert f_gpu.device.type == "cpu" and _on_cpu(m)
    torch.testing.assert_close(f_gpu.float(), f_cpu.float(), atol=2e-3, rtol=1e-2)
    runs = {}
    for dev in ("cpu", "cuda"):
        torch.manual_seed(0)                # the drafter's fc starts from the same random weights
        g = EagleGraph(copy.deepcopy(m), ArchAdapter(m), None, 2)
        w0 = g.fc.weight.detach().clone()
        out = train_eagle(g, windows, f_cpu, steps=8, seconds=1e9, batch=4, lr=3e-3, seed=0, device=dev)
        assert _on_cpu(g)
        runs[dev] = (out, g.fc.weight.detach().clone())
    (cpu, w_cpu), (gpu, w_gpu) = runs["cpu"], runs["cuda"]
    assert gpu["device"].startswith("cuda") and gpu["steps"] == 8
    assert abs(gpu["loss"]["last"] - cpu["loss"]["last"]) < 1e-2 * abs(cpu["loss"]["last"])
    # Adam's first steps move every weight by about lr whatever its gradient's size, so a weight whose gradient is
    # near zero may move either way on either device: compare the whole update, not each weight
    assert (w_gpu - w_cpu).norm() < 0.05 * (w_cpu - w0).norm()


def test_compile_with_adaptation_on_cuda_validates(tmp_path):
    """The pass trains on the GPU, export and validation run on the CPU: the artifact validates."""
    import json
    from accelc.targets import CompileOptions
    from tests.tiny_compile import compile_tiny
    spec = "encdec:decoder_layers=2,steps=3,seq_len=64,min_prefix=8,min_target=8,batch=2,eval_windows=2,device=cuda"
    out, bundle = compile_tiny(tmp_path, lambda calib: CompileOptions(convert=spec, calib=calib, formats=("onnx",)))
    rec = bundle.records["encdec"]
    assert rec["adaptation"]["steps"] == 3 and rec["adaptation"]["device"].startswith("cuda")
    v = bundle.records["validation"]["backends"]
    assert v["onnxruntime"]["greedy_agreement"] == 1.0
    assert json.loads((out / "manifest.json").read_text())["graphs"]


def test_torch_backend_on_cuda_generates_the_cpu_tokens(tmp_path):
    """The runtime's CUDA fallback (the torch backend on the GPU) decodes what the CPU decodes."""
    import numpy as np
    from accelc.runtime.artifact import open_artifact
    from accelc.runtime.decode import prefill
    from accelc.runtime.generate import generate
    from accelc.targets import CompileOptions
    from tests.tiny_compile import compile_tiny
    out, _ = compile_tiny(tmp_path, lambda calib: CompileOptions(calib=calib, formats=("onnx",)), target="cuda")
    prompt = [72, 101, 108, 108, 111, 44, 32, 119, 111, 114, 108, 100, 33]
    gpu = open_artifact(out, backend="torch", device="cuda")
    cpu = open_artifact(out, backend="onnxruntime", device="cpu")
    assert gpu.choice.device == "cuda"
    np.testing.assert_allclose(prefill(gpu.new_state(64), prompt, all_logits=True),
                               prefill(cpu.new_state(64), prompt, all_logits=True), atol=1e-3)
    assert generate(gpu, prompt, 24).tokens == generate(cpu, prompt, 24).tokens


@pytest.mark.parametrize("spec,method", [("4,group=32,steps=6,batch=4,lr=3e-3,lr_v=1e-2,tau=0.05", "pv-int"),
                                         ("1x4g4,steps=4,batch=4,lr=1e-3,tau=0.1", "pv")])
def test_pv_tuning_on_cuda_matches_cpu_and_its_state_loads_on_cpu(tmp_path, spec, method):
    """PV-Tuning's steps on the GPU: the CPU's losses (float32, summation order aside), every module back on the
    CPU, codes in range; the state file written on the GPU loads on the CPU (same key) into the same weights."""
    from accelc.compiler.bundle import ModelBundle
    from accelc.models.adapter import ArchAdapter
    from accelc.passes.quantization.quant_methods import build
    runs = {}
    for dev in ("cpu", "cuda"):
        model = tiny_model("llama", seed=0, initializer_range=0.25)
        b = ModelBundle(model=model, tokenizer=None, adapter=ArchAdapter(model))
        b.records["calibration_ids"] = torch.randint(0, 256, (8, 32), generator=torch.Generator().manual_seed(0))
        for p in build(method, f"{spec},device={dev},state={tmp_path / dev}.st", None):
            p(b)
        assert _on_cpu(b.model)
        runs[dev] = b
    t_cpu, t_gpu = (runs[d].records["quantization"]["tuning"] for d in ("cpu", "cuda"))
    assert t_gpu["device"].startswith("cuda") and t_gpu["steps"] == t_cpu["steps"]
    assert t_gpu["losses"] == pytest.approx(t_cpu["losses"], rel=2e-3, abs=1e-5)
    a, g = runs["cpu"].model.state_dict(), runs["cuda"].model.state_dict()
    codes = [k for k in a if k.endswith(".codes")]
    same = sum(int((a[k] == g[k]).sum()) for k in codes) / sum(a[k].numel() for k in codes)
    assert same > 0.99
    model = tiny_model("llama", seed=0, initializer_range=0.25)
    b = ModelBundle(model=model, tokenizer=None, adapter=ArchAdapter(model))
    b.records["calibration_ids"] = runs["cpu"].records["calibration_ids"]
    for p in build(method, f"{spec},device=cpu,state={tmp_path / 'cuda'}.st", None):
        p(b)
    assert "loaded_from" in b.records["quantization"]["tuning"]
    loaded = b.model.state_dict()
    assert all(torch.equal(loaded[k], g[k]) for k in codes)


def test_lococo_training_on_cuda_matches_cpu():
    """LoCoCo's compressors train on the GPU to the CPU's losses (float32), and end on the CPU with the model."""
    from accelc.passes.kvcache.policies import parse_kv_cache
    from accelc.passes.kvcache.train_lococo import LoCoCoTrainConfig, train
    spec = parse_kv_cache("lococo:8,buffer=4")
    seq = torch.randint(0, 256, (1, 64), generator=torch.Generator().manual_seed(5))
    runs = {}
    for dev in ("cpu", "cuda"):
        graph = DecoderGraph(tiny_model("llama", seed=0), scores=True).eval()
        comps, rec = train(graph, spec, seq, LoCoCoTrainConfig(steps=6, seq_len=64, chunk=8, lr=1e-2, device=dev))
        assert _on_cpu(graph) and _on_cpu(comps)
        runs[dev] = rec
    assert runs["cuda"]["device"].startswith("cuda") and runs["cpu"]["device"] == "cpu"
    assert runs["cuda"]["losses"] == pytest.approx(runs["cpu"]["losses"], rel=1e-3)
