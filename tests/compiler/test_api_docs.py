"""docs/api.md's examples run as written (on a tiny model), and `import accelc` exposes the API."""
import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "api.md"
CHAT = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}<assistant>"


@pytest.fixture(scope="module")
def tiny_source(tmp_path_factory):
    from accelc.models.tiny import byte_tokenizer, tiny_model
    src = tmp_path_factory.mktemp("src") / "tiny"
    tiny_model("llama", seed=0, vocab_size=257, initializer_range=0.25).save_pretrained(src)
    byte_tokenizer(CHAT).save_pretrained(src)
    return src


def examples():
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)


def test_the_api_is_the_package():
    import accelc
    from accelc.compiler import api
    assert accelc.compile is api.compile and accelc.load is api.load and set(accelc.__all__) >= {"compile", "load"}


def test_doc_examples_run(tiny_source, tmp_path, capsys):
    import accelc
    code = examples()
    assert len(code) == 2
    art = accelc.compile(str(tiny_source), out=tmp_path / "art")
    for block in code:
        exec(compile(block, str(DOC), "exec"), {"model_source": str(tiny_source), "artifact_dir": str(art),
                                               "build_dir": str(tmp_path / "ci")})
    out = capsys.readouterr().out
    assert "prompt tokens came from the cache" in out and "fp32 8 tokens" in out and "int8 8 tokens" in out
    assert (tmp_path / "ci" / "model-int8" / "manifest.json").is_file()


def test_bad_input_is_refused_before_the_load(tmp_path, monkeypatch):
    import accelc
    import accelc.models.sources as S
    from accelc.compiler.errors import InputError
    monkeypatch.setattr(S, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    with pytest.raises(InputError, match="unknown target"):
        accelc.compile("smollm2-135m", target="tpu", out=tmp_path / "o")
    with pytest.raises(InputError, match="output directory"):
        accelc.compile("smollm2-135m")
