"""pick=greedy (passes/encdec/pick.py): the search's loss is the converted model's, it removes layers that do nothing
first, and the pass records and caches what it chose."""
import copy

import pytest
import torch
import torch.nn.functional as F

from accelc.compiler.errors import InputError
from accelc.models.tiny import tiny_model
from accelc.passes.encdec.model import convert, pick_layers
from accelc.passes.encdec.options import parse_convert
from accelc.passes.encdec.pick import _loss, _targets, greedy_layers, split_point
from accelc.passes.export.decoder_graph import DecoderGraph


def _model(layers=6):
    return tiny_model("llama", seed=0, initializer_range=0.2, num_hidden_layers=layers)


def _teacher(model):
    return DecoderGraph(copy.deepcopy(model).eval()).eval()


def _windows(n, length=48):
    return torch.randint(3, 256, (n, length), generator=torch.Generator().manual_seed(5))


@pytest.mark.parametrize("layers", [[0, 2, 5], [1, 3], list(range(6))])
def test_search_loss_is_the_converted_models_distillation_loss(layers):
    """The loss the search ranks subsets by is the KL of the encoder-decoder that `convert` builds from them (causal
    encoder), over the same windows split the same way."""
    src = _model()
    teacher = _teacher(src)
    x = _windows(3)
    got = _loss(teacher, layers, *_targets(teacher, x, bf16=False), bf16=False)
    n = split_point(48)
    ed = convert(copy.deepcopy(src), layers=layers, causal_encoder=True).eval()
    with torch.no_grad():
        s = F.log_softmax(ed(x[:, :n - 1], x[:, n - 1:-1]), -1).flatten(0, 1)
        t = F.log_softmax(src(x[:, :-1]).logits[:, n - 1:], -1).flatten(0, 1)
    want = float(F.kl_div(s, t, log_target=True, reduction="sum")) / s.shape[0]
    assert got == pytest.approx(want, rel=1e-3, abs=1e-6)
    assert (got < 1e-5) == (layers == list(range(6)))


def _with_idle_layers(idle):
    """A 6-layer model whose layers `idle` add nothing to the residual stream (zero output projections)."""
    src = _model()
    with torch.no_grad():
        for i in idle:
            src.model.layers[i].self_attn.o_proj.weight.zero_()
            src.model.layers[i].mlp.down_proj.weight.zero_()
    return src


def test_greedy_removes_the_layers_that_do_nothing_first():
    src = _with_idle_layers([1, 4])
    keep, trace = greedy_layers(_teacher(src), _windows(2), 3)
    assert sorted(t["removed"] for t in trace[1:3]) == [1, 4]
    assert trace[1]["loss"] < 1e-5 and trace[2]["loss"] < 1e-5 and trace[3]["loss"] > 1e-4
    assert len(keep) == 3 and keep == sorted(keep) and not {1, 4} & set(keep)
    assert sorted([t["removed"] for t in trace[1:]] + keep) == list(range(6))
    # each removal is the best of its round: no other single layer of that round does better
    teacher = _teacher(src)
    targets = _targets(teacher, _windows(2), False)
    before = [0, 2, 3, 5]
    losses = {j: _loss(teacher, [i for i in before if i != j], *targets, bf16=False) for j in before}
    assert min(losses.values()) == pytest.approx(trace[3]["loss"], rel=1e-4)


def test_options_and_position_rules():
    assert parse_convert("encdec:decoder_layers=3,pick=greedy,search_windows=4").search_windows == 4
    with pytest.raises(InputError, match="search_windows"):
        parse_convert("encdec:pick=greedy,search_windows=0")
    with pytest.raises(ValueError, match="measurement"):
        pick_layers(6, 3, "greedy")
    assert pick_layers(6, 6, "greedy") == list(range(6))


def test_pass_records_the_search_and_reuses_it(monkeypatch, tmp_path):
    from accelc.compiler.bundle import ModelBundle
    from accelc.models.adapter import ArchAdapter
    from accelc.passes.encdec import pick
    from accelc.passes.encdec.convert import ConvertEncDecPass
    monkeypatch.setenv("ACCELC_CACHE", str(tmp_path))
    spec = parse_convert("encdec:decoder_layers=3,pick=greedy,search_windows=2,seq_len=64,min_prefix=8,"
                         "min_target=16,steps=0,eval_windows=0,encoder=causal")

    def run():
        src = _with_idle_layers([2, 3])
        bundle = ModelBundle(src, None, ArchAdapter(src))
        ConvertEncDecPass(spec)(bundle)
        return bundle.records["encdec"]

    rec = run()
    assert rec["pick"] == "greedy" and len(rec["decoder_from"]) == 3 and not {2, 3} & set(rec["decoder_from"])
    assert rec["decoder_from"] == rec["memory"] and len(rec["search"]) == 4
    assert len(list(tmp_path.glob("encdec/pick-*.json"))) == 1
    monkeypatch.setattr(pick, "greedy_layers", lambda *a, **k: pytest.fail("searched again"))
    assert run()["decoder_from"] == rec["decoder_from"]


def test_calibration_text_keys_the_cached_training(tmp_path):
    """Another --calib text must not reuse weights adapted on the default one; the default adds no key (existing
    caches stay valid)."""
    import dataclasses
    cfg = parse_convert("encdec:decoder_layers=3")
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("one text"), b.write_text("another text")
    keys = [dataclasses.replace(cfg, calib=c).training_options() for c in (None, str(a), str(b))]
    assert "calib" not in keys[0] and keys[1]["calib"] != keys[2]["calib"]
    a2 = tmp_path / "copy.txt"
    a2.write_text("one text")
    assert dataclasses.replace(cfg, calib=str(a2)).training_options() == keys[1]
