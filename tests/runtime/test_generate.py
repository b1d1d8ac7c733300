"""Streaming, stop strings, EOS and the chat template on a tiny artifact."""
import pytest

from accelc.runtime.artifact import open_artifact
from accelc.runtime.generate import Detokenizer, encode_prompt, generate, generate_iter
from accelc.runtime.sampling import SamplingConfig

PROMPT = [72, 101, 108, 108, 111]


@pytest.fixture(scope="module")
def art(tiny_artifact):
    return open_artifact(tiny_artifact, backend="onnxruntime")


def test_stream_pieces_join_to_the_text(art):
    pieces = []
    r = generate(art, PROMPT, 30, on_text=pieces.append)
    assert len(pieces) > 1 and "".join(pieces) == r.text == art.tokenizer.decode(r.tokens)


def test_detokenizer_holds_back_partial_utf8(art):
    tok = art.tokenizer
    ids = tok("é€x")["input_ids"]                             # byte tokens: 2 for é, 3 for €, 1 for x
    d = Detokenizer(tok)
    assert [d.add(i) for i in ids] == ["", "é", "", "", "€", "x"]
    assert d.text == "é€x"


def test_stop_string_truncates_and_is_not_streamed(art):
    full = generate(art, PROMPT, 30)
    stop = full.text[10:13]
    k = full.text.find(stop)
    pieces = []
    r = generate(art, PROMPT, 30, stop=[stop, "never-appears"], on_text=pieces.append)
    assert r.stop_reason == "stop" and r.text == full.text[:k] == "".join(pieces)
    assert r.tokens == full.tokens[:len(r.tokens)] and len(r.tokens) < 30
    quiet = generate(art, PROMPT, 30, stop=[stop])                # same result without streaming
    assert quiet.text == r.text and quiet.tokens == r.tokens


def test_eos_stops_generation(art):
    full = generate(art, PROMPT, 20)
    eos = art.eos_ids
    try:
        art.eos_ids = frozenset({full.tokens[6]})
        r = generate(art, PROMPT, 20)
    finally:
        art.eos_ids = eos
    first = full.tokens.index(full.tokens[6])
    assert r.stop_reason == "eos" and r.tokens == full.tokens[:first]


def test_sampling_seeded_and_different_from_greedy(art):
    cfg = SamplingConfig(temperature=1.5, top_k=50, top_p=0.95, seed=7)
    a, b = generate(art, PROMPT, 20, cfg), generate(art, PROMPT, 20, cfg)
    c = generate(art, PROMPT, 20, SamplingConfig(temperature=1.5, top_k=50, top_p=0.95, seed=8))
    g = generate(art, PROMPT, 20)
    assert a.tokens == b.tokens and a.tokens != c.tokens and a.tokens != g.tokens


def test_chat_template_on_by_default(art):
    tok = art.tokenizer
    chat = encode_prompt(tok, "hi")
    assert tok.decode(chat) == "<user>hi<assistant>"
    assert tok.decode(encode_prompt(tok, "hi", raw=True)) == "hi"


def test_iterator_returns_result(art):
    it = generate_iter(art, PROMPT, 5)
    pieces = []
    while True:
        try:
            pieces.append(next(it))
        except StopIteration as done:
            result = done.value
            break
    assert "".join(pieces) == result.text and len(result.tokens) == 5
