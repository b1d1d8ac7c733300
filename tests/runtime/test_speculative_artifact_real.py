"""SmolLM2-135M compiled with `--drafter fused`: through the artifact runtime, greedy decoding with speculation
gives exactly the tokens of plain decoding on 20 evaluation-split prompts (OpenVINO), and `accelc run --json`
reports the speculative metrics."""
import json

import pytest

from accelc.compiler.cli import main
from accelc.runtime.artifact import open_artifact
from accelc.runtime.generate import generate
from accelc.runtime.speculative.artifact import generate_speculative, load_drafter
from accelc.runtime.speculative.loop import SpecConfig, SpecStats

pytestmark = pytest.mark.real
N_PROMPTS, PROMPT_LEN, NEW = 20, 24, 16


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    out = tmp_path_factory.mktemp("spec-real") / "cpu-fused"
    # few training steps: this checks losslessness and the plumbing, not the acceptance rate
    assert main(["compile", "smollm2-135m", "--target", "cpu", "-o", str(out),
                 "--drafter", "fused:layers=8,steps=4,windows=4,holdout=1,seq_len=64,batch=2"]) == 0
    return out


def eval_prompts(tokenizer):
    from accelc.models.corpus import load_text, token_stream
    ids = token_stream(tokenizer, load_text("eval"))
    step = (ids.numel() - PROMPT_LEN) // N_PROMPTS
    return [ids[i * step:i * step + PROMPT_LEN].tolist() for i in range(N_PROMPTS)]


def test_greedy_speculative_equals_plain_on_eval_prompts(artifact):
    art = open_artifact(artifact, backend="openvino", report=False)
    art.eos_ids = frozenset()                    # compare all NEW tokens
    m = art.manifest
    assert {g.get("role") for g in m["graphs"].values()} >= {"decoder", "trunk", "draft_head", "verify_tail"}
    val = m["records"]["drafter_validation"]["backends"]
    assert val["openvino"]["target_max_diff"] < 1e-3 and val["onnxruntime"]["target_greedy"] == 1.0
    drafter = load_drafter(art)
    total = SpecStats()
    for p in eval_prompts(art.tokenizer):
        ref = generate(art, p, NEW).tokens
        res, stats = generate_speculative(art, drafter, p, NEW, config=SpecConfig(k=4, draft_mode="fixed"))
        assert res.tokens == ref
        total.rounds += stats.rounds
        total.drafted += stats.drafted
        total.accepted += stats.accepted
    # every token after the first comes from a round: an accepted draft or the verifier's own token
    assert total.accepted + total.rounds == N_PROMPTS * (NEW - 1) and total.drafted >= total.rounds
    print("acceptance", total.acceptance_rate, "mean accepted", total.mean_accepted)


def test_cli_run_speculative_json(artifact, capsys):
    assert main(["run", str(artifact), "--prompt", "The capital of France is", "--raw", "--max-new-tokens", "16",
                 "--json"]) == 0
    spec = json.loads(capsys.readouterr().out)
    assert main(["run", str(artifact), "--prompt", "The capital of France is", "--raw", "--max-new-tokens", "16",
                 "--json", "--no-speculative"]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert spec["tokens"] == plain["tokens"] and "speculative" not in plain
    s = spec["speculative"]
    assert s["rounds"] >= 1 and {"acceptance_rate", "mean_accepted", "draft_share", "verify_share"} <= set(s)
