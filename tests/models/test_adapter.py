import pytest
import torch

from accelc.compiler.errors import UnsupportedArchitectureError
from accelc.models.adapter import ArchAdapter
from accelc.models.tiny import TINY_FAMILIES, tiny_model


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_adapter_finds_every_part(family):
    m = tiny_model(family)
    a = ArchAdapter(m)
    cfg = m.config
    assert a.family.name == family
    assert a.num_layers == cfg.num_hidden_layers
    assert a.embed.weight.shape == (cfg.vocab_size, cfg.hidden_size)
    assert a.vocab_size == cfg.vocab_size
    for i in range(a.num_layers):
        p = a.attn_proj(i)
        assert p["q"].weight.shape == (a.num_heads * a.head_dim, a.hidden_size)
        assert p["k"].weight.shape == (a.num_kv_heads * a.head_dim, a.hidden_size)
        assert p["o"].weight.shape == (a.hidden_size, a.num_heads * a.head_dim)
        mp = a.mlp_proj(i)
        assert mp["up"].weight.shape == (cfg.intermediate_size, a.hidden_size)
        assert mp["down"].weight.shape == (a.hidden_size, cfg.intermediate_size)
        norms = a.norms(i)
        assert "input" in norms and "pre_ffn" in norms
        assert ("post_ffn" in norms) == a.family.sandwich_norms
        assert ("q" in norms) == a.family.qk_norm
    assert len(a.linears()) == 7 * a.num_layers
    # the adapter's parts are the model's parts: zeroing the head through it changes the logits to 0
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        a.final_norm.weight.zero_() if not a.family.norm_plus_one else a.final_norm.weight.fill_(-1.0)
        assert m(ids).logits.abs().max().item() < 1e-4


def test_parameter_count_counts_tied_weights_once():
    m = tiny_model("llama")
    a = ArchAdapter(m)
    assert a.tied_embeddings
    assert a.num_parameters() == sum(p.numel() for p in m.parameters())  # .parameters() dedups too
    assert a.describe()["parameters"] == a.num_parameters()


def test_unsupported_architecture_is_named():
    from transformers import GPT2Config, GPT2LMHeadModel
    m = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64))
    with pytest.raises(UnsupportedArchitectureError, match="unsupported architecture 'gpt2'.*llama"):
        ArchAdapter(m)
