"""Fixed-size KV caches (issue 17): the spec, the selection rules, LoCoCo's compressor, the chunked reference run."""
import pytest
import torch

from accelc.compiler.errors import InputError
from accelc.models.adapter import ArchAdapter
from accelc.models.tiny import tiny_model
from accelc.passes.export.decoder_graph import DecoderGraph
from accelc.passes.kvcache.fixed_run import FixedCacheRun
from accelc.passes.kvcache.lococo import Compressor
from accelc.passes.kvcache.policies import KVCacheSpec, gather_slots, parse_kv_cache, select


@pytest.fixture(scope="module")
def graph():
    torch.manual_seed(0)
    m = tiny_model("llama", seed=0, initializer_range=0.25).eval()
    return DecoderGraph(m, ArchAdapter(m), scores=True).eval()


def test_spec_spellings():
    assert parse_kv_cache(None) == KVCacheSpec() and parse_kv_cache("full").kind == "full"
    assert parse_kv_cache("window:64").slots == 64
    s = parse_kv_cache("sink:128,sinks=8")
    assert (s.kind, s.slots, s.sinks) == ("sink", 128, 8)
    assert parse_kv_cache("h2o:256").kind == "h2o"
    assert parse_kv_cache("lococo:128,device=cpu").options["device"] == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no CUDA device"):
            parse_kv_cache("lococo:128,device=cuda")
    assert {"tune": "none", "norm_lr": 1e-4}.items() <= parse_kv_cache("lococo:128,tune=none,norm_lr=1e-4").options.items()
    lc = parse_kv_cache("lococo:128,steps=50")
    assert (lc.kind, lc.slots, lc.options["steps"]) == ("lococo", 128, 50)
    # defaults: M/16 mixtures, M/16 heavy hitters, the rest the most recent tokens
    assert (lc.options["keep"], lc.options["local"]) == (0.9375, 112)
    assert parse_kv_cache("lococo:8").options["local"] == 6 and parse_kv_cache("lococo:2").options["local"] == 0
    assert parse_kv_cache("lococo:128,keep=0.5").options["local"] == 56
    assert parse_kv_cache("lococo:128,keep=0.5,local=0").options["local"] == 0
    for m in (2, 8, 16, 100, 128, 512):
        o = parse_kv_cache(f"lococo:{m}").options
        c = Compressor(4, m, o["keep"], local=o["local"])
        assert c.fused == max(1, m // 16) and c.keep - c.local == max(1, m // 16)
    for bad in ("ring:4", "window", "window:x", "sink:8,sinks=8", "h2o:64,sinks=2", "lococo:64,keep=0",
                "lococo:64,steps=0", "full:3", "lococo:64,device=gpu", "lococo:64,tune=embed", "lococo:64,norm_lr=0"):
        with pytest.raises(InputError):
            parse_kv_cache(bad)


def test_scores_are_attention_column_sums(graph):
    ids = torch.randint(0, 256, (1, 7))
    pos, mask = torch.arange(7)[None], torch.ones(1, 7, dtype=torch.long)
    out = graph(ids, pos, mask, *graph.empty_cache(1))
    n = 2 * (graph.last - graph.first)
    cols = out[1 + n:]
    g = graph.num_heads // graph.kv_heads
    assert len(cols) == graph.last - graph.first and cols[0].shape == (1, graph.kv_heads, 7)
    for c in cols:       # every query's probabilities sum to 1, for each of the g heads of a group
        torch.testing.assert_close(c.sum(-1), torch.full((1, graph.kv_heads), 7.0 * g))
        assert torch.all(c[..., 0] >= 1.0 * g - 1e-4)        # the first slot is seen by all 7 queries
    plain = DecoderGraph(tiny_model("llama", seed=0, initializer_range=0.25).eval()).eval()    # the same weights
    torch.testing.assert_close(plain(ids, pos, mask, *plain.empty_cache(1))[0], out[0])


@pytest.mark.parametrize("kind", ["window:6", "sink:6,sinks=2", "h2o:6"])
def test_selection_keeps_exactly_m_slots_in_order(kind):
    spec = parse_kv_cache(kind)
    scores = torch.rand(1, 3, 20)
    idx = select(spec, scores)
    assert idx.shape == (1, 3, 6) and torch.all(idx[..., 1:] > idx[..., :-1])
    if spec.kind == "window":
        assert idx[0, 0].tolist() == list(range(14, 20))
    if spec.kind == "sink":
        assert idx[0, 0].tolist() == [0, 1, 16, 17, 18, 19]
    if spec.kind == "h2o":
        assert set(idx[0, 1].tolist()) == set(scores[0, 1].topk(6).indices.tolist())


def _same_rows(a, b):
    """a, b [B, M, H, D]: the same slots per head, in any order."""
    for h in range(a.shape[2]):
        d = torch.cdist(a[0, :, h], b[0, :, h])
        assert d.min(dim=1).values.max() < 1e-6 and d.min(dim=0).values.max() < 1e-6


@pytest.mark.parametrize("keep_rate, lam", [(1.0, None), (0.5, 0.0)])
def test_lococo_degenerates_to_h2o(keep_rate, lam):
    torch.manual_seed(1)
    k, v, s = torch.randn(1, 24, 3, 8), torch.randn(1, 24, 3, 8), torch.rand(1, 3, 24)
    c = Compressor(8, 10, keep_rate=keep_rate)
    if lam is not None:
        c.lam.data.fill_(lam)
    kk, vv = c(k, v, s)
    assert kk.shape == (1, 10, 3, 8) and vv.shape == (1, 10, 3, 8)
    idx = select(KVCacheSpec("h2o", 10), s)
    _same_rows(kk, gather_slots(k, idx))
    _same_rows(vv, gather_slots(v, idx))


def test_lococo_mixes_and_trains():
    torch.manual_seed(2)
    k, v, s = torch.randn(1, 24, 3, 8), torch.randn(1, 24, 3, 8), torch.rand(1, 3, 24)
    c = Compressor(8, 10)
    kk, vv = c(k, v, s)
    assert kk.shape == (1, 10, 3, 8) and c.keep == 5 and c.fused == 5
    (kk.square().sum() + vv.sum()).backward()
    assert c.conv.weight.grad.abs().sum() > 0 and c.lam.grad is not None


def test_a_cache_that_never_exceeds_m_is_the_full_cache(graph):
    ids = torch.randint(0, 256, (1, 40), generator=torch.Generator().manual_seed(3))
    full = FixedCacheRun(graph, parse_kv_cache("full"))
    fixed = FixedCacheRun(graph, parse_kv_cache("h2o:48"))
    a = torch.cat([full.step(ids[:, i:i + 8]) for i in range(0, 40, 8)], dim=1)
    b = torch.cat([fixed.step(ids[:, i:i + 8]) for i in range(0, 40, 8)], dim=1)
    assert fixed.cuts == 0
    torch.testing.assert_close(a, b)
    ref = graph(ids, torch.arange(40)[None], torch.ones(1, 40, dtype=torch.long), *graph.empty_cache(1))[0]
    torch.testing.assert_close(a, ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kind", ["window:16", "sink:16", "h2o:16", "lococo:16"])
def test_fixed_caches_stay_within_m_plus_buffer(graph, kind):
    spec = parse_kv_cache(kind)
    comps = [Compressor(graph.head_dim, 16) for _ in range(graph.last - graph.first)] if spec.kind == "lococo" else None
    run = FixedCacheRun(graph, spec, comps)
    ids = torch.randint(0, 256, (1, 96), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        for i in range(0, 96, 4):
            logits = run.step(ids[:, i:i + 4])
            assert run.slots <= 16 + spec.buffer + 4 and torch.isfinite(logits).all()
    assert run.cuts >= 3


def _compressed_loss(graph, spec, comps, seq, chunk):
    """Mean next-token loss over the chunks that ran on a compressed cache (no training, fixed weights)."""
    run, losses = FixedCacheRun(graph, spec, comps), []
    with torch.no_grad():
        for i in range(0, seq.shape[1] - 1, chunk):
            ids, target = seq[:, i:i + chunk], seq[:, i + 1:i + 1 + chunk]
            cuts = run.cuts
            logits = run.step(ids)[:, :target.shape[1]]
            if run.cuts > cuts:
                losses.append(float(torch.nn.functional.cross_entropy(logits[0], target[0])))
    return sum(losses) / len(losses)


def test_training_lowers_the_loss_of_a_compressed_cache(graph):
    from accelc.passes.kvcache.train_lococo import LoCoCoTrainConfig, make_compressors, train
    spec = parse_kv_cache("lococo:8,buffer=4")
    seq = torch.randint(0, 256, (1, 64), generator=torch.Generator().manual_seed(5))
    cfg = LoCoCoTrainConfig(steps=25, seq_len=64, chunk=8, lr=1e-2, tune="none")
    before = [p.requires_grad for p in graph.parameters()]
    weights = [p.detach().clone() for p in graph.parameters()]
    start = _compressed_loss(graph, spec, make_compressors(graph, spec, cfg), seq, cfg.chunk)   # the same init
    comps, rec = train(graph, spec, seq, cfg)
    assert len(rec["losses"]) == 25
    # the per-step curve is measured while the weights move; the check is a fixed evaluation before and after
    assert _compressed_loss(graph, spec, comps, seq, cfg.chunk) < 0.97 * start
    assert [p.requires_grad for p in graph.parameters()] == before          # restored
    assert rec["device"] == "cpu" or torch.cuda.is_available()       # auto: the CPU where torch sees no GPU
    assert all(torch.equal(a, b) for a, b in zip(weights, graph.parameters()))     # the model stays frozen


def test_tuned_norms_train_in_place_and_nothing_else_moves():
    """tune=norms (the default; the reference's inference mode): the norm weights train with the compressors,
    every other model weight stays as it was, and the loss of the compressed run falls below the frozen model's
    with compressors trained alone."""
    from accelc.passes.kvcache.train_lococo import LoCoCoTrainConfig, norm_parameters, train
    spec = parse_kv_cache("lococo:8,buffer=4")
    seq = torch.randint(0, 256, (1, 64), generator=torch.Generator().manual_seed(5))
    losses = {}
    for tune in ("none", "norms"):
        torch.manual_seed(0)
        m = tiny_model("llama", seed=0, initializer_range=0.25).eval()
        g = DecoderGraph(m, ArchAdapter(m), scores=True).eval()
        names = {n for n, _ in norm_parameters(g)}
        assert names and all("norm" in n for n in names)
        before = {n: p.detach().clone() for n, p in g.named_parameters()}
        comps, rec = train(g, spec, seq, LoCoCoTrainConfig(steps=25, seq_len=64, chunk=8, lr=1e-2, norm_lr=1e-2,
                                                           tune=tune))
        after = dict(g.named_parameters())
        moved = {n for n in before if not torch.equal(before[n], after[n])}
        assert moved == (names if tune == "norms" else set())
        assert rec["tune"] == tune and rec["norm_weights"] == (sum(after[n].numel() for n in names) if moved else 0)
        assert after["final_norm.weight"] is m.model.norm.weight       # the model's own: the export carries it
        losses[tune] = _compressed_loss(g, spec, comps, seq, 8)
    assert losses["norms"] < losses["none"]


def test_lococo_local_slots_are_always_kept_verbatim():
    torch.manual_seed(0)
    c = Compressor(4, 8, local=3)
    k, v = torch.randn(1, 20, 2, 4), torch.randn(1, 20, 2, 4)
    s = torch.rand(1, 2, 20)
    s[..., -3:] = 0.0                                  # the lowest scores: H2O would drop them
    kk, vv = c(k, v, s)
    torch.testing.assert_close(kk[:, -3:], k[:, -3:])   # the kept slots come last, the most recent at the end
    torch.testing.assert_close(vv[:, -3:], v[:, -3:])
    mask = (torch.arange(24) < 20).long()[None]        # the same in a static buffer with 4 empty slots
    pad = lambda x: torch.cat((x, torch.randn(1, 4, 2, 4)), dim=1)    # noqa: E731
    km, vm = c(pad(k), pad(v), torch.cat((s, torch.rand(1, 2, 4)), dim=-1), mask)
    torch.testing.assert_close(km, kk, rtol=1e-4, atol=1e-5)
    with pytest.raises(InputError):
        parse_kv_cache("lococo:16,keep=0.5,local=9")


def test_lococo_local_slots_are_tokens_across_cuts():
    """After a cut, fewer new tokens than `local` arrive: the next cut keeps the newest tokens of before the first
    cut too, not the mixtures the first cut made."""
    torch.manual_seed(1)
    c = Compressor(4, 8, local=3)
    k, v, s = torch.randn(1, 20, 2, 4), torch.randn(1, 20, 2, 4), torch.rand(1, 2, 20)
    kk, vv = c(k, v, s)
    nk, nv = torch.randn(1, 2, 2, 4), torch.randn(1, 2, 2, 4)         # two new tokens
    k2, v2 = c(torch.cat((kk, nk), 1), torch.cat((vv, nv), 1), torch.rand(1, 2, 10) * 0.01)
    torch.testing.assert_close(k2[:, -3:], torch.cat((k[:, -1:], nk), 1))
    torch.testing.assert_close(v2[:, -3:], torch.cat((v[:, -1:], nv), 1))


def test_lococo_lambda_is_clamped_to_a_convex_blend():
    """A lambda trained past [0, 1] acts as its bound: the cut slots stay convex combinations of the cache's."""
    torch.manual_seed(3)
    k, v, s = torch.randn(1, 24, 3, 8), torch.randn(1, 24, 3, 8), torch.rand(1, 3, 24)
    c = Compressor(8, 10)
    for raw, bound in ((-0.7, 0.0), (1.6, 1.0)):
        c.lam.data.fill_(raw)
        got = c(k, v, s)
        c.lam.data.fill_(bound)
        want = c(k, v, s)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w)
    assert c(k, v, s)[0].abs().max() <= k.abs().max() + 1e-6


def test_a_baseline_cache_trains_the_norms_alone():
    """train() with a sink spec (the baselines' counterpart of tune=norms): no compressors, the norms move, the
    loss under that cache falls."""
    from accelc.passes.kvcache.train_lococo import LoCoCoTrainConfig, norm_parameters, train
    spec = parse_kv_cache("sink:8,buffer=4")
    seq = torch.randint(0, 256, (1, 64), generator=torch.Generator().manual_seed(5))
    m = tiny_model("llama", seed=0, initializer_range=0.25).eval()
    g = DecoderGraph(m, ArchAdapter(m), scores=True).eval()
    start = _compressed_loss(g, spec, None, seq, 8)
    before = {n: p.detach().clone() for n, p in norm_parameters(g)}
    comps, rec = train(g, spec, seq, LoCoCoTrainConfig(steps=25, seq_len=64, chunk=8, norm_lr=1e-2))
    assert len(comps) == 0 and rec["steps"] == 25 and rec["norm_weights"] > 0
    assert all(not torch.equal(before[n], p) for n, p in norm_parameters(g))
    assert _compressed_loss(g, spec, None, seq, 8) < start
