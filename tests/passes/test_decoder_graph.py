"""DecoderGraph == the transformers model, for every tiny family: prefill, cached decode, left padding."""
import pytest
import torch

from accelc.models.tiny import TINY_FAMILIES, tiny_model
from accelc.passes.export.decoder_graph import DecoderGraph

TOL = 1e-4


def _randomize_norms(model, seed=1):
    # tiny configs init norm weights to 1 (or 0 for Gemma): perturb them so the norm semantics are tested
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.3 * torch.randn(p.shape, generator=g))


def _step(graph, ids, pos, mask, cache):
    out = graph(ids, pos, mask, *cache)
    logits, new = out[0], out[1:]
    cache = [torch.cat((c, n), dim=1) for c, n in zip(cache, new)]
    return logits, cache


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_prefill_and_decode_match_hf(family):
    model = tiny_model(family)
    _randomize_norms(model)
    graph = DecoderGraph(model).eval()
    ids = torch.randint(0, 256, (1, 7), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = model(ids, use_cache=True)
        logits, cache = _step(graph, ids, torch.arange(7)[None], torch.ones(1, 7, dtype=torch.long),
                              graph.empty_cache(1))
        assert logits.shape == (1, 7, 256)
        assert cache[0].shape == (1, 7, graph.kv_heads, graph.head_dim)
        assert (logits - ref.logits).abs().max() < TOL
        past, seq = ref.past_key_values, ids
        for step in range(3):
            nxt = ref.logits[:, -1:].argmax(-1)
            seq = torch.cat((seq, nxt), dim=1)
            ref = model(nxt, past_key_values=past, use_cache=True)
            past = ref.past_key_values
            P = seq.shape[1] - 1
            logits, cache = _step(graph, nxt, torch.tensor([[P]]), torch.ones(1, P + 1, dtype=torch.long), cache)
            assert (logits - ref.logits).abs().max() < TOL, (family, step)
        # the graph's keys are the model's keys after RoPE, position-major
        hf_k = past.layers[0].keys.transpose(1, 2)
        assert (cache[0][:, -hf_k.shape[1]:] - hf_k).abs().max() < TOL


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_left_padded_batch_matches_hf(family):
    model = tiny_model(family)
    _randomize_norms(model)
    graph = DecoderGraph(model).eval()
    ids = torch.randint(0, 256, (2, 6), generator=torch.Generator().manual_seed(4))
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        ref = model(ids, attention_mask=mask, position_ids=pos, use_cache=True)
        logits, cache = _step(graph, ids, pos, mask, graph.empty_cache(2))
        valid = mask.bool()
        assert (logits - ref.logits)[valid].abs().max() < TOL
        assert torch.isfinite(logits).all()  # fully masked pad rows must not produce NaN
        nxt = ref.logits[:, -1:].argmax(-1)
        mask2 = torch.cat((mask, torch.ones(2, 1, dtype=torch.long)), dim=1)
        pos2 = pos[:, -1:] + 1
        ref2 = model(nxt, attention_mask=mask2, position_ids=pos2, past_key_values=ref.past_key_values,
                     use_cache=True)
        logits2, _ = _step(graph, nxt, pos2, mask2, cache)
        assert (logits2 - ref2.logits).abs().max() < TOL


@pytest.mark.parametrize("family", ["mistral", "gemma2", "gemma3_text"])
def test_sliding_window_matches_hf(family):
    # window 4 < sequence 9: the local layers must really drop old tokens
    model = tiny_model(family, sliding_window=4)
    graph = DecoderGraph(model).eval()
    assert 4 in graph.layer_window
    ids = torch.randint(0, 256, (1, 9), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = model(ids).logits
        logits, _ = _step(graph, ids, torch.arange(9)[None], torch.ones(1, 9, dtype=torch.long), graph.empty_cache(1))
        full = tiny_model(family, sliding_window=None if family == "mistral" else 64)
        assert (model(ids).logits - full(ids).logits).abs().max() > 1e-3   # the window matters here
    assert (logits - ref).abs().max() < TOL


def test_gemma3_uses_local_rope_base_on_sliding_layers():
    types = ["sliding_attention", "full_attention", "sliding_attention"]   # the tiny default is all sliding
    model = tiny_model("gemma3_text", layer_types=types)
    _randomize_norms(model)
    graph = DecoderGraph(model).eval()
    assert graph.layer_rope == types and graph.layer_window == [64, None, 64]
    assert not torch.equal(graph.inv_freq_sliding_attention, graph.inv_freq_full_attention)
    ids = torch.randint(0, 256, (1, 7), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        ref = model(ids).logits
        logits, _ = _step(graph, ids, torch.arange(7)[None], torch.ones(1, 7, dtype=torch.long), graph.empty_cache(1))
    assert (logits - ref).abs().max() < TOL


def test_layer_range_composes_to_whole_model():
    model = tiny_model("llama")
    whole = DecoderGraph(model).eval()
    lower = DecoderGraph(model, layers=(0, 2)).eval()
    upper = DecoderGraph(model, layers=(2, 3)).eval()
    assert lower.output_names()[0] == "hidden_out" and upper.input_names()[0] == "hidden_in"
    assert upper.input_names()[3] == "past_key.2"
    ids = torch.randint(0, 256, (1, 5), generator=torch.Generator().manual_seed(6))
    pos, mask = torch.arange(5)[None], torch.ones(1, 5, dtype=torch.long)
    with torch.no_grad():
        ref = whole(ids, pos, mask, *whole.empty_cache(1))
        h, *kv_lo = lower(ids, pos, mask, *lower.empty_cache(1))
        logits, *kv_hi = upper(h, pos, mask, *upper.empty_cache(1))
        early = DecoderGraph(model, layers=(0, 2), output="logits").eval()(ids, pos, mask, *lower.empty_cache(1))[0]
    assert h.shape == (1, 5, 64)
    assert torch.allclose(logits, ref[0], atol=1e-5)
    assert all(torch.allclose(a, b) for a, b in zip(kv_lo + kv_hi, ref[1:]))
    assert early.shape == logits.shape and (early - logits).abs().max() > 1e-3   # early exit: a different model


def test_bad_layer_range():
    with pytest.raises(ValueError):
        DecoderGraph(tiny_model("llama"), layers=(2, 2))


@pytest.mark.parametrize("rope", [{"rope_type": "linear", "factor": 2.0},
                                  {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 128}])
def test_rope_scaling_variants_match_hf(rope):
    model = tiny_model("llama", rope_parameters={"rope_theta": 10000.0, **rope})
    graph = DecoderGraph(model).eval()
    if rope["rope_type"] == "yarn":
        assert graph.rope_scaling["default"] != 1.0   # yarn scales cos/sin: the test would catch ignoring it
    ids = torch.randint(0, 256, (1, 7), generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        ref = model(ids, position_ids=torch.arange(100, 107)[None]).logits
        logits, _ = _step(graph, ids, torch.arange(100, 107)[None], torch.ones(1, 7, dtype=torch.long),
                          graph.empty_cache(1))
    assert (logits - ref).abs().max() < TOL
