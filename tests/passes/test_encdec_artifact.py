"""Encoder-decoder artifacts (issue 18): export, validation, the runtime's encoder split, static graphs."""
import numpy as np
import pytest


from accelc.compiler.errors import InputError
from accelc.targets import CompileOptions
from tests.tiny_compile import compile_tiny

SPEC = "encdec:decoder_layers=2,steps=3,seq_len=64,min_prefix=8,min_target=8,batch=2,eval_windows=2"


@pytest.fixture(scope="module", params=["cpu", "npu", "cpu-bidirectional"])
def compiled(request, tmp_path_factory):
    """The default encoder is blended (encoder=auto); cpu-bidirectional: a plain bidirectional one exports,
    validates and runs as the others do."""
    target, _, encoder = request.param.partition("-")
    spec = SPEC + (f",encoder={encoder}" if encoder else "")
    d = tmp_path_factory.mktemp(f"encdec-{request.param}")
    out, bundle = compile_tiny(d, lambda calib: CompileOptions(convert=spec, calib=calib, formats=("openvino", "onnx"),
                                                              cache_len=256, prefill_chunk=8), target=target)
    return target, out, bundle


def test_artifact_records_the_roles(compiled):
    target, out, bundle = compiled
    graphs = bundle.records["graphs"]
    assert graphs["encoder"]["role"] == "encoder" and graphs["encoder"]["memory_layers"] == [0, 2]
    decoders = [r for n, r in graphs.items() if n != "encoder"]
    assert decoders and all(r["memory"] == "encoder" and r["num_layers"] == 2 for r in decoders)
    assert (out / graphs["encoder"]["onnx"]).is_file() and (out / graphs["encoder"]["openvino"]).is_file()
    v = bundle.records["validation"]["backends"]
    assert set(v) == {"onnxruntime", "openvino"} and all(r["greedy_agreement"] == 1.0 for r in v.values())
    rec = bundle.records["encdec"]
    assert rec["decoder_layers"] == 2 and rec["encoder_layers"] == 3 and rec["adaptation"]["steps"] == 3
    assert (rec["gates"] is None) == (rec["encoder"] != "blend")


@pytest.mark.parametrize("backend", ["openvino", "onnxruntime"])
def test_runtime_matches_torch(compiled, backend):
    from accelc.runtime.artifact import open_artifact
    from accelc.runtime.decode import decode_one, prefill
    target, out, bundle = compiled
    ed = bundle.records["encdec_module"]
    art = open_artifact(out, backend=backend, report=False, full_logits=True)
    ids = np.array([[5, 17, 99, 3, 42, 7, 8, 120, 33, 61, 2]])
    tokens, ref = ed.reference(ids, 5)
    state = art.new_state(32)
    rows = [prefill(state, ids[0], all_logits=True)]
    assert rows[0].shape == (1, ref.shape[-1])          # the decoder ran the prompt's last token only
    assert state.cache.length == ids.shape[1] and state.cache.floor == ids.shape[1] - 1
    for t in tokens[0, ids.shape[1]:]:
        rows.append(np.array(decode_one(state, int(t)))[None])
    np.testing.assert_allclose(np.concatenate(rows), ref[0], atol=2e-4)


def test_generate_and_rollback_start_over(compiled):
    from accelc.runtime.artifact import open_artifact
    from accelc.runtime.generate import generate
    target, out, bundle = compiled
    ed = bundle.records["encdec_module"]
    art = open_artifact(out, backend="openvino", report=False)
    ids = [5, 17, 99, 3, 42, 7, 8, 120]
    want = ed.reference(np.array([ids]), 6)[0][0, len(ids):].tolist()
    want = want[:want.index(256)] if 256 in want else want          # 256: the tiny tokenizer's eos
    assert generate(art, ids, 6).tokens == want
    # a second prompt sharing a prefix inside the encoder's memory is encoded again (as a fresh state would)
    state = art.new_state(64)
    generate(art, ids + [9, 10], 4, state=state)
    assert generate(art, ids + [11], 4, state=state, reuse=len(ids)).tokens == generate(art, ids + [11], 4).tokens


def test_long_prompt_past_the_static_encoder(compiled):
    """npu: the encoder takes cache_len // 2 = 128 tokens; the rest of a longer prompt goes through the decoder."""
    import torch
    from accelc.runtime.artifact import open_artifact
    from accelc.runtime.decode import prefill
    target, out, bundle = compiled
    ed = bundle.records["encdec_module"]
    art = open_artifact(out, backend="onnxruntime", report=False, full_logits=True)
    ids = (np.arange(150)[None] * 7 + 3) % 250
    split = 128 if target == "npu" else ids.shape[1] - 1
    with torch.no_grad():
        want = ed(torch.from_numpy(ids[:, :split]), torch.from_numpy(ids[:, split:]))[0, -1].numpy()
    state = art.new_state(160)
    got = prefill(state, ids[0])
    assert state.cache.floor == split
    np.testing.assert_allclose(got, want, atol=2e-4)


def test_bad_combinations_refused_before_load():
    with pytest.raises(InputError):
        CompileOptions(convert="encdec", drafter="eagle")
    with pytest.raises(InputError):
        CompileOptions(convert="encdec", quantize="pv:2x8g8")
    with pytest.raises(InputError):
        CompileOptions(convert="encdec", kv_cache="sink:64")
    with pytest.raises(InputError):
        CompileOptions(convert="encdec:nope=1")
    from accelc.targets import get_target
    with pytest.raises(InputError):
        get_target("cpu").resolve(CompileOptions(convert="encdec", formats=("openvino", "native")))
    assert "native" not in get_target("cpu").resolve(CompileOptions(convert="encdec")).formats



def test_prefix_eval_artifact_equals_torch(compiled):
    """`accelc eval ARTIFACT --prefix P` on the runtime scores what the torch model scores on the same windows."""
    from accelc.compiler.harness.prefix_eval import evaluate_prefix
    from accelc.models.corpus import load_text, token_stream
    from accelc.passes.encdec.prefix import encdec_logits, prefix_windows, score
    target, out, bundle = compiled
    P = 40
    got = evaluate_prefix(str(out), P, max_tokens=2 * (P + 128), backend="onnxruntime")
    want = score(encdec_logits(bundle.records["encdec_module"]),
                 prefix_windows(token_stream(bundle.tokenizer, load_text("eval")), P, 2), P)
    assert got["windows"] == 2 and got["model_kind"] == "encoder-decoder"
    assert abs(got["perplexity"] - want["perplexity"]) < 1e-3 * want["perplexity"]
