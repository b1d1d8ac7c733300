"""FLAP: fluctuation scores, adaptive allocation by a global threshold on standardised scores, bias compensation
of the removed channels, and the compensated model through export and validation."""
import copy
import json

import pytest
import torch
import torch.nn as nn

from accelc.compiler.errors import InputError
from accelc.models.adapter import ArchAdapter
from accelc.models.tiny import random_ids as ids, tiny_bundle as bundle
from accelc.passes import calibration as cal
from accelc.passes.pruning.flap import FlapConfig, FlapPass, flap_scores
from accelc.passes.pruning.mlp_channels import global_counts, round_counts
from accelc.targets import CompileOptions
from accelc.targets.phases import compression

from test_wanda_sp import kept_index, zero_channels

torch.set_num_threads(1)


def down_inputs(model, x) -> list[torch.Tensor]:
    """Every block's down_proj input over all tokens [tokens, channels] (float64), from one full forward."""
    ad = ArchAdapter(model)
    got = [None] * ad.num_layers

    def keep(i):
        def hook(_m, inp, _o):
            got[i] = inp[0].detach().reshape(-1, inp[0].shape[-1]).double()
        return hook

    hs = [ad.mlp_proj(i)["down"].register_forward_hook(keep(i)) for i in range(ad.num_layers)]
    with torch.no_grad():
        model(input_ids=x, use_cache=False)
    for h in hs:
        h.remove()
    return got


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma2"])
@pytest.mark.parametrize("bias", [True, False])
def test_pruned_equals_dense_zeroed_plus_compensation(family, bias):
    b = bundle(family)
    x = ids()
    dense = copy.deepcopy(b.model)
    h = down_inputs(dense, x)
    r = FlapPass(FlapConfig(ratio=0.4, bias=bias)).prune(b, x)
    assert r.changed and r.metrics["parameters"] < r.metrics["parameters_before"]
    ad_d = ArchAdapter(dense)
    for i in range(3):
        p, d = b.adapter.mlp_proj(i), ad_d.mlp_proj(i)
        k = kept_index(p["gate"].weight, d["gate"].weight)
        assert torch.equal(p["up"].weight, d["up"].weight[k]) and torch.equal(p["down"].weight, d["down"].weight[:, k])
        W, mean = d["down"].weight.detach().double(), h[i].mean(0)
        removed = torch.ones(128, dtype=torch.bool)
        removed[k] = False
        want = W[:, removed] @ mean[removed]                               # the removed channels' mean output
        if not bias:
            assert p["down"].bias is None
        else:
            torch.testing.assert_close(p["down"].bias.double(), want, rtol=1e-4, atol=1e-6)
            # on the calibration mean input, the pruned, compensated projection gives the dense output
            with torch.no_grad():
                torch.testing.assert_close(p["down"](mean[k].float()).double(), W @ mean, rtol=1e-4, atol=1e-5)
            with torch.no_grad():
                d["down"].bias = nn.Parameter(want.float())
        zero_channels(d, k)
    y = ids(4, 24, seed=3)
    with torch.no_grad():
        torch.testing.assert_close(b.model(input_ids=y).logits, dense(input_ids=y).logits, rtol=1e-4, atol=1e-5)
    rec = b.records["pruning"]
    assert sum(rec["kept_channels"]) == 384 - round(0.4 * 384)               # the global fraction is the ratio
    assert rec["method"] == "flap" and rec["alloc"] == "adaptive" and rec["bias"] is bias
    assert b.model.config.intermediate_size == 128


def test_adaptive_allocation_is_a_global_threshold_on_standardised_scores():
    b = bundle(seed=1)
    with torch.no_grad():                        # block 0: a few channels dominate its mean and std
        b.adapter.mlp_proj(0)["down"].weight[:, :8] *= 10
    x = ids()
    dense = copy.deepcopy(b.model)
    h = down_inputs(dense, x)
    FlapPass(FlapConfig(ratio=0.4)).prune(b, x)
    ad_d = ArchAdapter(dense)
    z = []
    for i in range(3):
        s = h[i].var(0, unbiased=True) * ad_d.mlp_proj(i)["down"].weight.detach().double().pow(2).sum(0)
        z.append((s - s.mean()) / s.std())
    flat = torch.cat(z)
    thresh = flat.sort(descending=True).values[384 - round(0.4 * 384) - 1]
    want = [int((zi >= thresh).sum()) for zi in z]
    kept = b.records["pruning"]["kept_channels"]
    assert kept == want and sum(kept) == 230
    # block 0's other channels standardise into a tight cluster just below 0, above the global threshold:
    # the blocks lose different shares (block 0 less than the ratio)
    assert kept[0] > max(kept[1], kept[2]) and kept[0] > 77
    for i in range(3):
        got = kept_index(b.adapter.mlp_proj(i)["gate"].weight, ad_d.mlp_proj(i)["gate"].weight)
        assert torch.equal(got, torch.nonzero(z[i] >= thresh).flatten())
    # uniform allocation: the ratio in every block
    b2 = bundle(seed=1)
    FlapPass(FlapConfig(ratio=0.4, alloc="uniform")).prune(b2, x)
    assert b2.records["pruning"]["kept_channels"] == [77] * 3


def test_scores_from_the_input_statistics():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 16, 12, generator=g) * torch.rand(12, generator=g) + torch.randn(12, generator=g)
    w = torch.randn(6, 12, generator=g)
    st = cal.InputStats(12)
    st.add(x[:2])
    st.add(x[2:])
    flat = x.reshape(-1, 12).double()
    var = flat.var(0, unbiased=True)
    torch.testing.assert_close(flap_scores(w, st, "ifv").double(), var, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(flap_scores(w, st, "wifv").double(), var * w.double().pow(2).sum(0), rtol=1e-5, atol=1e-6)
    wifn = (w.double().abs() * flat.pow(2).mean(0).sqrt()).mean(0)
    torch.testing.assert_close(flap_scores(w, st, "wifn").double(), wifn, rtol=1e-5, atol=1e-6)


def test_global_counts_and_rounding_keep_the_total():
    assert global_counts([torch.tensor([5.0, 4.0, 3.0]), torch.tensor([-9.0, -9.5, -9.9])], 0.5) == [2, 1]
    assert global_counts([torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0])], 0.0) == [2, 2]
    assert round_counts([70, 33, 200], [128, 128, 256], 0) == [70, 33, 200]          # small blocks: no rounding
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        sizes = [1536] * 6
        counts = torch.randint(1, 1536, (6,), generator=g).tolist()
        out = round_counts(counts, sizes, 0)                                           # auto: multiples of 64
        assert all(c % 64 == 0 and 64 <= c <= 1536 for c in out)
        assert abs(sum(out) - sum(counts)) <= 32 or sum(out) == 6 * 64 and sum(counts) < 6 * 64
        assert all(abs(o - c) < 128 for o, c in zip(out, counts))
    assert round_counts([40, 100], [1024, 1024], 32) == [32, 96]          # 128 is nearer 140 than 160
    assert round_counts([40, 110], [1024, 1024], 32) == [32, 128]         # 160 is nearer 150 than 128


def test_ratio_zero_is_noop():
    b = bundle()
    ref = copy.deepcopy(b.model)
    r = FlapPass(FlapConfig(ratio=0.0)).prune(b, None)
    assert not r.changed and b.adapter.intermediate_sizes() == [128] * 3
    assert all(torch.equal(p, q) for p, q in zip(b.model.parameters(), ref.parameters()))
    assert all(b.adapter.mlp_proj(i)["down"].bias is None for i in range(3))


@pytest.mark.parametrize("spec", ["flap:1.0", "flap:-0.1", "flap:2:4", "flap:", "flap:0.3,metric=l2",
                                  "flap:0.3,alloc=global", "flap:0.3,bias=maybe", "flap:0.3,round=-2",
                                  "flap:0.3,seqlen=1", "flap:0.3,rank=4"])
def test_bad_specs_refused_with_one_line(spec):
    with pytest.raises(InputError) as e:
        compression(CompileOptions(prune=spec))
    msg = str(e.value)
    assert "\n" not in msg and ("flap" in msg or "ratio" in msg), msg


def test_bad_spec_on_the_command_line_is_one_error_line_before_the_load(capsys, monkeypatch, tmp_path):
    from cli_checks import error_line, no_model_load
    from accelc.compiler.cli import main
    no_model_load(monkeypatch)
    assert main(["compile", "--prune", "flap:0.3,alloc=global", "-o", str(tmp_path / "out")]) == 2
    assert "alloc" in error_line(capsys)


def test_spec_syntax():
    (p,) = compression(CompileOptions(prune="flap:0.25,metric=ifv,alloc=uniform,bias=false,round=32,samples=8"))
    c = p.config
    assert (c.ratio, c.metric, c.alloc, c.bias, c.round, c.samples) == (0.25, "ifv", "uniform", False, 32, 8)


def test_compensated_model_compiles_exports_and_validates(tmp_path):
    """A family with no down_proj bias gets one; the ONNX and OpenVINO graphs carry it and validate."""
    import onnx
    from onnx import numpy_helper

    import accelc
    from accelc.models.tiny import byte_tokenizer, tiny_model
    src = tmp_path / "src"
    tiny_model("llama", vocab_size=257, initializer_range=0.25).save_pretrained(src)
    byte_tokenizer().save_pretrained(src)
    calib = tmp_path / "calib.txt"
    calib.write_text("The quick brown fox jumps over the lazy dog. A calibration text of plain sentences. " * 20)
    out = accelc.compile(str(src), "cpu", tmp_path / "art", prune="flap:0.4,samples=4,seqlen=32",
                         calib=str(calib), formats="openvino,onnx", cache_len=64, prefill_chunk=8)
    manifest = json.loads((out / "manifest.json").read_text())
    prune = manifest["records"]["pruning"]
    assert prune["method"] == "flap" and sum(prune["kept_channels"]) == 230 and all(prune["compensation_norm"])
    for backend, res in manifest["records"]["validation"]["backends"].items():
        assert res["greedy_agreement"] == 1.0 and res["max_logit_diff"] < 1e-3, (backend, res)
    graph = manifest["graphs"]["decoder"]
    m = onnx.load(str(out / graph["onnx"]))
    biases = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer if i.name.endswith("down.bias")}
    assert len(biases) == 3, sorted(i.name for i in m.graph.initializer)
    norms = sorted(round(float((b ** 2).sum() ** 0.5), 4) for b in biases.values())
    assert norms == pytest.approx(sorted(prune["compensation_norm"]), rel=1e-4)
