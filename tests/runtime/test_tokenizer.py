"""The runtime's tokenizer (tokenizers + jinja2, no transformers) gives what transformers gives: ids, decoded
text, chat-template renderings and EOS, on the tiny byte tokenizer and the packaged model's tokenizer."""
import random

import pytest
from transformers import AutoTokenizer

from accelc.runtime.tokenizer import RuntimeTokenizer

TEXTS = ["Hello world", "  leading and trailing  ", "café — 東京 🚀\nnew line\ttab", "don't stop , ok ?",
         "<|im_end|> inside text <eos>", "a" * 300, "What is the capital of France?"]
CONVERSATIONS = [
    [{"role": "user", "content": "hi"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."},
     {"role": "assistant", "content": "Blue."}, {"role": "user", "content": "Another, with «quotes» & <tags>?"}],
]


def compare(tdir):
    ref, ours = AutoTokenizer.from_pretrained(str(tdir)), RuntimeTokenizer(tdir)
    assert ours.eos_token_id == ref.eos_token_id
    for t in TEXTS:
        for special in (True, False):
            assert ours(t, add_special_tokens=special)["input_ids"] == ref(t, add_special_tokens=special)["input_ids"]
    rng = random.Random(0)
    for _ in range(50):
        ids = [rng.randrange(len(ref)) for _ in range(rng.randrange(1, 40))]
        for skip in (True, False):
            assert ours.decode(ids, skip_special_tokens=skip) == ref.decode(ids, skip_special_tokens=skip)
    assert bool(ours.chat_template) == bool(ref.chat_template)
    if ref.chat_template:
        for conv in CONVERSATIONS:
            for gen in (True, False):
                assert ours.apply_chat_template(conv, add_generation_prompt=gen, tokenize=False) == \
                    ref.apply_chat_template(conv, add_generation_prompt=gen, tokenize=False)


def test_tiny_artifact_tokenizer_matches_transformers(tiny_artifact):
    compare(tiny_artifact / "tokenizer")


@pytest.mark.real
def test_packaged_model_tokenizer_matches_transformers():
    from accelc.models.sources import packaged_checkpoint
    compare(packaged_checkpoint("smollm2-135m"))


def test_artifact_opens_with_the_runtime_tokenizer_and_without_transformers(tiny_artifact):
    import subprocess
    import sys
    code = ("import sys; from accelc.runtime.artifact import open_artifact; "
            f"a = open_artifact({str(tiny_artifact)!r}, report=False); "
            "assert type(a.tokenizer).__name__ == 'RuntimeTokenizer'; "
            "bad = [m for m in ('transformers', 'torch') if m in sys.modules]; assert not bad, bad")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-600:]
