"""Speculative decoding over a fixed-size KV cache (issue 17): drafts are capped at the cache's next cut, so a
verify pass never runs past it and greedy output equals one-token decoding's for the position-rule caches."""
import sys
from pathlib import Path

import pytest

from accelc.compiler.kv_spec import parse_kv_cache
from accelc.runtime.artifact import open_artifact
from accelc.runtime.generate import generate
from accelc.runtime.sampling import SamplingConfig
from accelc.runtime.speculative.artifact import DecoderStep, run_speculative
from accelc.runtime.speculative.loop import SpecConfig, speculative_generate
from accelc.targets import CompileOptions

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tiny_compile import compile_tiny  # noqa: E402

PROMPT = list(range(65, 115))
NEW = 100
CHUNK = 8                 # the artifacts' prefill chunk: a prompt chunk may take the cache past M + buffer


class Oracle:
    """Drafts the known greedy continuation, every third round with its last draft wrong (a rejection)."""

    def __init__(self, prompt, want):
        self.full, self.rounds = list(prompt) + list(want), 0

    def start(self):
        self.rounds = 0

    def source(self, seq):
        return "oracle"

    def propose(self, seq, k, config, sampling, sampler, stop=None):
        self.rounds += 1
        drafts = self.full[len(seq):len(seq) + k]
        if drafts and self.rounds % 3 == 0:
            drafts[-1] = (drafts[-1] + 1) % 256
        return drafts, [None] * len(drafts)

    def rolled_back(self, length):
        pass


class Watched(DecoderStep):
    """The artifact's decoder, recording the most slots its fixed cache held."""
    most = 0

    def forward(self, tokens):
        out = super().forward(tokens)
        self.most = max(self.most, self.state.cache.slots)
        return out

    def forward_last(self, tokens, n):
        out = super().forward_last(tokens, n)
        self.most = max(self.most, self.state.cache.slots)
        return out


def _artifact(tmp_path, kind):
    art, _ = compile_tiny(tmp_path, lambda calib: CompileOptions(calib=calib, kv_cache=kind, formats=("onnx",),
                                                                 prefill_chunk=CHUNK))
    return open_artifact(art, backend="onnxruntime", report=False, full_logits=True)


@pytest.mark.parametrize("kind, start", [("window:8", 0), ("sink:12,sinks=2", 0), ("window:8,buffer=4", 5)])
def test_greedy_speculation_over_a_fixed_cache_equals_plain_decoding(tmp_path, kind, start):
    """The last case: 45 tokens, chunks of 8, a cut at 12 slots: the prompt's last chunk (5 tokens) is cut before
    as a whole; prefilled as 4 tokens and then the last one, it would be cut between them."""
    a = _artifact(tmp_path, kind)
    spec = parse_kv_cache(kind)
    prompt = PROMPT[start:]
    want = generate(a, prompt, NEW).tokens
    assert len(want) == NEW
    target = Watched(a, 256)
    got, stats = speculative_generate(target, Oracle(prompt, want), prompt, NEW,
                                      SpecConfig(k=6, draft_mode="fixed", k_max=6))
    assert got == want
    assert stats.accepted >= 30 and stats.drafted > stats.accepted          # it speculated, and was rejected
    assert target.state.cache.cuts >= 8 and spec.slots < target.most <= spec.slots + max(spec.buffer, CHUNK)
    # without the cap a verify pass may run past the cut point: the cache is cut earlier and the output changes
    loose = Watched(a, 256)
    loose.room = lambda: None
    other, _ = speculative_generate(loose, Oracle(prompt, want), prompt, NEW,
                                    SpecConfig(k=6, draft_mode="fixed", k_max=6))
    assert other != want


def test_prompt_lookup_runs_over_a_fixed_cache(tmp_path):
    a = _artifact(tmp_path, "h2o:16")
    result, stats = run_speculative(a, PROMPT * 3, 80, SamplingConfig(), draft_mode="lookup")
    assert 0 < len(result.tokens) <= 80 and stats.drafted > 0
