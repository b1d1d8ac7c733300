"""SmolLM2-135M: greedy speculative decoding with a (briefly trained) fused drafter gives exactly the greedy
tokens of plain decoding on 20 prompts from the evaluation split."""
import pytest
import torch

pytestmark = pytest.mark.real


def test_greedy_speculative_identical_on_20_eval_prompts():
    from accelc.models.corpus import load_text, token_stream
    from accelc.models.sources import load_model
    from accelc.passes.export.decoder_graph import DecoderGraph
    from accelc.passes.drafting.drafter import FusedDrafterConfig, FusedDrafterPass
    from accelc.passes.drafting.drafter_model import fused_steps
    from accelc.runtime.speculative.steps import GraphStep, cache_for, torch_graph_fn
    from accelc.runtime.speculative.loop import SpecConfig, SpecStats, autoregressive_generate, speculative_generate
    torch.set_num_threads(1)
    b = load_model("smollm2-135m")
    FusedDrafterPass(FusedDrafterConfig(layers=8, steps=3, windows=2, holdout=1, seq_len=64))(b)
    target, draft = fused_steps(b.model, b.adapter, b.records["drafter_module"], 64)
    full = DecoderGraph(b.model, b.adapter).eval()
    plain = GraphStep(torch_graph_fn(full), cache_for(full, 64))
    ids = token_stream(b.tokenizer, load_text("eval"))
    stats = SpecStats()
    for i in range(20):
        prompt = ids[i * 997: i * 997 + 24].tolist()
        ref = autoregressive_generate(plain, prompt, 8)
        out, stats = speculative_generate(target, draft, prompt, 8, SpecConfig(k=3, draft_mode="fixed"), stats=stats)
        assert out == ref, i
    assert stats.drafted > 0 and stats.rounds > 0
