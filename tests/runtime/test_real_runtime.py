"""SmolLM2-135M compiled for cpu (and npu): fp32 greedy output is token-identical to transformers greedy.

The issue's 'done when': 128 new tokens on 5 prompts, on both OpenVINO and ONNX Runtime; plus the
npu target's static graphs on the OpenVINO CPU plugin (2 prompts, shorter, to keep the test short).
"""
import pytest
import torch

from accelc.compiler.cli import main
from accelc.runtime.artifact import open_artifact
from accelc.compiler.harness.bench import PROMPTS
from accelc.runtime.generate import generate

pytestmark = pytest.mark.real
N = 128


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    d = tmp_path_factory.mktemp("real")
    # validation is skipped: this test is the stronger check (128 greedy tokens against transformers)
    assert main(["compile", "smollm2-135m", "--target", "cpu", "-o", str(d / "cpu"), "--no-validate"]) == 0
    assert main(["compile", "smollm2-135m", "--target", "npu", "-o", str(d / "npu"), "--no-validate",
                 "--cache-len", "192", "--prefill-chunk", "32"]) == 0
    return d


@pytest.fixture(scope="module")
def reference(compiled):
    """transformers greedy (torch fp32 eager) for each prompt: (prompt ids, 128 new ids)."""
    from accelc.models.sources import load_model
    b = load_model("smollm2-135m")
    out = []
    with torch.inference_mode():
        for p in PROMPTS:
            ids = b.tokenizer(p)["input_ids"]
            g = b.model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                 max_new_tokens=N, do_sample=False, eos_token_id=None, pad_token_id=0)
            out.append((ids, g[0, len(ids):].tolist()))
    assert all(len(r) == N for _, r in out)
    return out


@pytest.mark.parametrize("backend", ["openvino", "onnxruntime"])
def test_cpu_artifact_greedy_equals_transformers(compiled, reference, backend):
    art = open_artifact(compiled / "cpu", backend=backend)
    art.eos_ids = frozenset()                                  # compare all 128 tokens
    for ids, ref in reference:
        assert generate(art, ids, N).tokens == ref


def test_npu_static_graphs_on_cpu_plugin(compiled, reference):
    art = open_artifact(compiled / "npu", backend="openvino", device="cpu")
    assert art.static and art.cache_len == 192 and art.prefill_chunk == 32
    art.eos_ids = frozenset()
    for ids, ref in reference[2:4]:                            # the two longest prompts: 2 and 3 prefill chunks
        assert generate(art, ids, 64).tokens == ref[:64]
