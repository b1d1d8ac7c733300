"""Encoder-decoder conversion (issue 18): the construction, bidirectionality, layer choice, options."""
import pytest
import torch

from accelc.compiler.errors import InputError
from accelc.models.tiny import TINY_FAMILIES, tiny_model
from accelc.passes.encdec.model import convert, pick_layers
from accelc.passes.encdec.options import parse_convert


def _model(family="llama", layers=4):
    return tiny_model(family, seed=0, initializer_range=0.2, num_hidden_layers=layers)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_causal_balanced_conversion_is_the_source(family):
    """Encoder made causal, decoder positions continuing after the input: the source model's logits exactly."""
    src = _model(family)
    ids = torch.randint(3, 256, (2, 13), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = src(ids).logits[:, 8:]
        ed = convert(src, causal_encoder=True).eval()
        got = ed(ids[:, :8], ids[:, 8:])
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)


def test_encoder_is_bidirectional():
    ed = convert(_model()).eval()
    ids = torch.randint(3, 256, (1, 10), generator=torch.Generator().manual_seed(2))
    changed = ids.clone()
    changed[0, 8] = (changed[0, 8] + 7) % 256
    with torch.no_grad():
        a, b = ed.encode(ids), ed.encode(changed)
    # a later input token changes the memory (keys) of earlier positions, from the second layer on
    assert not torch.allclose(a[2][:, :8], b[2][:, :8])
    causal = convert(_model(), causal_encoder=True).eval()
    with torch.no_grad():
        a, b = causal.encode(ids), causal.encode(changed)
    torch.testing.assert_close(a[2][:, :8], b[2][:, :8])


def test_unbalanced_decoder_layers_and_sharing():
    src = _model(layers=6)
    embed = src.model.embed_tokens.weight
    ed = convert(src, decoder_layers=3, pick="spread")
    assert ed.decoder_from == [0, 2, 5] == ed.memory
    assert len(ed.decoder.model.layers) == 3 and ed.decoder.config.num_hidden_layers == 3
    assert len(ed.encoder.model.layers) == 6
    assert ed.encoder.model.embed_tokens.weight is embed is ed.decoder.model.embed_tokens.weight
    assert ed.decoder.lm_head.weight.data_ptr() == embed.data_ptr()
    # the encoder holds copies: training one side leaves the other alone
    assert ed.encoder.model.layers[0].mlp.up_proj.weight.data_ptr() != \
        ed.decoder.model.layers[0].mlp.up_proj.weight.data_ptr()
    ids = torch.randint(3, 256, (1, 9))
    with torch.no_grad():
        assert ed(ids[:, :5], ids[:, 5:]).shape == (1, 4, 256)
    assert pick_layers(30, 10, "spread") == [0, 3, 6, 10, 13, 16, 19, 23, 26, 29]
    assert pick_layers(30, 6, "last") == list(range(24, 30)) and pick_layers(30, 6, "first") == list(range(6))
    assert pick_layers(30, 1, "spread") == [29] and pick_layers(30, 1, "ends") == [29]
    assert pick_layers(30, 10, "ends") == [0, 1] + list(range(22, 30))
    assert pick_layers(30, 6, "ends") == [0] + list(range(25, 30)) and pick_layers(5, 5, "ends") == list(range(5))


def test_reference_matches_the_one_call_forward():
    ed = convert(_model(), decoder_layers=2).eval()
    ids = torch.randint(3, 256, (1, 7)).numpy()
    tokens, logits = ed.reference(ids, 4)
    assert tokens.shape == (1, 11) and logits.shape == (1, 5, 256)
    torch.testing.assert_close(torch.from_numpy(ed.uncached(tokens, 7)), torch.from_numpy(logits),
                               atol=1e-5, rtol=1e-4)


def test_options():
    cfg = parse_convert("encdec:decoder_layers=10,attention=merged,steps=5")
    assert (cfg.decoder_layers, cfg.attention, cfg.steps) == (10, "merged", 5)
    assert parse_convert("encdec").decoder_layers == 0
    for bad in ("encdec:foo=1", "encdec:steps=x", "t5", "encdec:attention=sideways", "encdec:decoder_layers=-1",
                "encdec:pick=middle", "encdec:min_prefix=600", "encdec:kd=2", "encdec:attention=cross"):
        with pytest.raises(InputError):
            parse_convert(bad)
    with pytest.raises(InputError):
        convert(_model(), decoder_layers=9)


@pytest.mark.parametrize("train,encoder", [("all", "bidirectional"), ("decoder", "causal"), ("decoder", "bidirectional")])
def test_adaptation_lowers_the_loss_and_trains_what_it_says(train, encoder):
    """A few steps on a fixed stream: the distillation loss falls; train=decoder leaves the encoder and the shared
    embeddings alone; the teacher-memory shortcut (decoder, causal) gives the same loss as running the encoder."""
    import copy
    from accelc.passes.encdec.options import EncDecConfig
    from accelc.passes.encdec.train import _step_loss, adapt
    from accelc.passes.export.decoder_graph import DecoderGraph
    src = _model(layers=4)
    teacher = DecoderGraph(copy.deepcopy(src).eval()).eval()
    ed = convert(src, decoder_layers=2, causal_encoder=encoder == "causal")
    enc_w = ed.encoder.model.layers[1].mlp.up_proj.weight.detach().clone()
    emb = ed.decoder.model.embed_tokens.weight.detach().clone()
    dec_w = ed.decoder.model.layers[1].mlp.up_proj.weight.detach().clone()
    stream = torch.randint(3, 256, (2000,), generator=torch.Generator().manual_seed(0))
    cfg = EncDecConfig(steps=25, seq_len=48, min_prefix=8, min_target=8, batch=4, lr=3e-3, train=train,
                       splits=2 if train == "decoder" else 1,
                       encoder=encoder, kd=1.0)
    x = stream[:96].view(2, 48)
    with torch.no_grad():
        before = float(_step_loss(ed, teacher, x, 20, cfg, False, False))
        if train == "decoder" and encoder == "causal":
            torch.testing.assert_close(_step_loss(ed, teacher, x, 20, cfg, False, True), torch.tensor(before))
    out = adapt(ed, teacher, stream, cfg)
    with torch.no_grad():
        after = float(_step_loss(ed, teacher, x, 20, cfg, False, False))
    assert out["steps"] == 25 and after < 0.8 * before
    assert not torch.equal(dec_w, ed.decoder.model.layers[1].mlp.up_proj.weight)
    untouched = train == "decoder"
    assert torch.equal(enc_w, ed.encoder.model.layers[1].mlp.up_proj.weight) == untouched
    assert torch.equal(emb, ed.decoder.model.embed_tokens.weight) == untouched
    assert not any(p.requires_grad for p in ed.parameters())


def test_pass_without_adaptation_is_the_plain_conversion():
    from accelc.compiler.bundle import ModelBundle
    from accelc.models.adapter import ArchAdapter
    from accelc.passes.encdec.convert import ConvertEncDecPass
    src = _model(layers=4)
    ids = torch.randint(3, 256, (1, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():         # the default encoder (auto, train=all) is blended, its gates shut at first
        want = convert(_model(layers=4), decoder_layers=2, blend=0.0)(ids[:, :7], ids[:, 7:])
    bundle = ModelBundle(src, None, ArchAdapter(src))
    res = ConvertEncDecPass(parse_convert("encdec:decoder_layers=2,steps=0,eval_windows=0"))(bundle)
    assert bundle.records["encdec"]["encoder"] == "blend" and bundle.records["encdec"]["gates"]["max"] == 0.0
    ed = bundle.records["encdec_module"]
    assert res.changed and bundle.model is ed.decoder and bundle.adapter.num_layers == 2
    assert bundle.records["encdec"]["adaptation"] is None and bundle.records["encdec"]["decoder_from"] == [0, 3]
    with torch.no_grad():
        torch.testing.assert_close(ed(ids[:, :7], ids[:, 7:]), want)


@pytest.mark.parametrize("train", ["all", "decoder"])
def test_chunked_checkpointed_loss_has_the_plain_gradient(train):
    """The memory-saving training step (the head and loss a few positions at a time with a backward per chunk, every
    layer checkpointed) gives the loss and the gradients of the plain loss backpropagated at once."""
    import copy
    from accelc.passes.encdec.options import EncDecConfig
    from accelc.passes.encdec.train import _step_loss, _teacher
    from accelc.passes.export.decoder_graph import DecoderGraph
    src = _model(layers=4)
    teacher = DecoderGraph(copy.deepcopy(src).eval()).eval()
    ed = convert(src, decoder_layers=2)
    cfg = EncDecConfig(seq_len=32, min_prefix=8, min_target=8, train=train, kd=0.7)
    x = torch.randint(3, 256, (2, 32), generator=torch.Generator().manual_seed(5))
    params = [p for p in ed.parameters()]

    def grads(chunked: bool):
        for p in params:
            p.grad = None
        ed.checkpoint_layers(chunked)
        taught = _teacher(teacher, x, False)
        if chunked:
            loss = _step_loss(ed, teacher, x, 12, cfg, False, False, taught, scale=0.5, chunk=7)
        else:
            loss = _step_loss(ed, teacher, x, 12, cfg, False, False, taught)
            (loss * 0.5).backward()
        return float(loss.detach()), [None if p.grad is None else p.grad.clone() for p in params]

    plain_loss, plain = grads(False)
    loss, got = grads(True)
    ed.checkpoint_layers(False)
    assert abs(loss - plain_loss) < 1e-5 * max(1.0, plain_loss)
    assert sum(g is not None for g in plain) > 10
    for g, want in zip(got, plain):
        assert (g is None) == (want is None)
        if g is not None:
            torch.testing.assert_close(g, want, atol=1e-6, rtol=1e-4)


def test_blended_encoder_spans_causal_to_bidirectional():
    """encoder=blend: gates at 0 give the causal encoder (the source exactly, balanced), at 1 the bidirectional one;
    in between a later token changes earlier positions' memory."""
    ids = torch.randint(3, 256, (2, 13), generator=torch.Generator().manual_seed(1))
    src = _model()
    with torch.no_grad():
        want = src(ids).logits[:, 8:]
        shut = convert(src, blend=0.0).eval()
        torch.testing.assert_close(shut(ids[:, :8], ids[:, 8:]), want, atol=2e-5, rtol=1e-4)
        bidir, full = convert(_model()).eval(), convert(_model(), blend=1.0).eval()
        for a, b in zip(bidir.encode(ids), full.encode(ids)):
            torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)
        half = convert(_model(), blend=0.0).eval()
        half.enc_graph.body.blend_gate.data[:, 1] = 0.5        # one head of every layer opened halfway
        changed = ids.clone()
        changed[:, 10] = (changed[:, 10] + 7) % 256
        a, b = half.encode(ids), half.encode(changed)
        assert not torch.allclose(a[2][:, :10], b[2][:, :10])
        a, b = shut.encode(ids), shut.encode(changed)
        torch.testing.assert_close(a[2][:, :10], b[2][:, :10])
    for bad in ("encdec:encoder=blend,train=decoder", "encdec:encoder=blend,gate=1.5", "encdec:gate_lr=0"):
        with pytest.raises(InputError):
            parse_convert(bad)
    assert parse_convert("encdec").encoder == "blend"
    assert parse_convert("encdec:train=decoder").encoder == "bidirectional"


def test_blend_gates_learn_at_their_own_rate():
    """Adaptation moves the gates (clamped to [0, 1]) by about gate_lr per step, far more than lr would."""
    import copy
    from accelc.passes.encdec.options import EncDecConfig
    from accelc.passes.encdec.train import adapt
    from accelc.passes.export.decoder_graph import DecoderGraph
    src = _model(layers=3)
    teacher = DecoderGraph(copy.deepcopy(src).eval()).eval()
    ed = convert(src, blend=0.5)
    stream = torch.randint(3, 256, (2000,), generator=torch.Generator().manual_seed(0))
    cfg = EncDecConfig(steps=6, seq_len=48, min_prefix=8, min_target=8, batch=2, lr=1e-6, gate_lr=0.05,
                       encoder="blend", gate=0.5)
    adapt(ed, teacher, stream, cfg)
    g = ed.enc_graph.body.blend_gate.detach()
    moved = (g - 0.5).abs()
    assert moved.max() > 0.02 and float(g.min()) >= 0 and float(g.max()) <= 1
    assert not g.requires_grad
