import pytest
import torch

from accelc.compiler.errors import InputError
from accelc.models import corpus


def test_clean_brown_file():
    raw = "\n\n\tThe/at jury/nn said/vbd ``/`` no/at ''/'' ,/, fine/jj ./.\n\n\tNext/ap one/cd ./.\n"
    assert corpus.clean_brown_file(raw) == 'The jury said " no ", fine.\nNext one.'


def test_split_is_fixed_disjoint_and_covers_everything():
    calib, ev = corpus.brown_files("calib"), corpus.brown_files("eval")
    assert len(calib) + len(ev) == 500
    assert not {p.name for p in calib} & {p.name for p in ev}
    assert len(ev) == 50
    assert [p.name for p in corpus.brown_files("eval")] == [p.name for p in ev]  # deterministic
    assert ev[0].name == "ca01" and ev[1].name == "ca11"


def test_split_text_is_deterministic_and_disjoint():
    a, b = corpus.split_text("eval"), corpus.split_text("eval")
    assert a == b and len(a) > 500_000
    c = corpus.split_text("calib")
    assert len(c) > 4_000_000
    # no eval paragraph appears in the calibration text
    paras = [p for p in a.split("\n") if len(p) > 200][:50]
    assert paras and not any(p in c for p in paras)


class WordTok:
    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [hash(w) % 1000 for w in text.split()]}


def test_calibration_batches_are_seeded(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text(" ".join(f"w{i}" for i in range(2000)))
    x = corpus.calibration_batches(WordTok(), n_samples=4, seq_len=16, seed=1, path=f)
    y = corpus.calibration_batches(WordTok(), n_samples=4, seq_len=16, seed=1, path=f)
    z = corpus.calibration_batches(WordTok(), n_samples=4, seq_len=16, seed=2, path=f)
    assert x.shape == (4, 16) and torch.equal(x, y) and not torch.equal(x, z)


def test_user_text_file_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        corpus.read_text_file(tmp_path / "missing.txt")
    bad = tmp_path / "bin.txt"
    bad.write_bytes(b"\xff\xfe\x00\x81" * 100)
    with pytest.raises(InputError, match="UTF-8"):
        corpus.read_text_file(bad)
    short = tmp_path / "short.txt"
    short.write_text("too short")
    with pytest.raises(InputError, match="too little"):
        corpus.read_text_file(short)


def test_second_text_is_off_brown_and_clean():
    """The second evaluation text: the State of the Union addresses from 1990 on, in date order, without the
    transcripts' bracketed audience notes, and sharing no paragraph with Brown."""
    files = sorted(p.name for p in corpus.sotu_dir().glob("*.txt"))
    assert files[0].startswith("1990_") and len(files) >= 30
    assert all(int(f[:4]) >= corpus.SOTU_FROM for f in files)
    text = corpus.load_text("sotu")
    assert len(text) > 1_000_000 and "[Laughter]" not in text and "[Applause]" not in text
    assert "State of the Union" in text
    brown = corpus.split_text("calib") + corpus.split_text("eval")
    paras = [p for p in text.split("\n") if len(p) > 200][:50]
    assert paras and not any(p in brown for p in paras)


def test_unknown_named_text_is_refused():
    from accelc.compiler.protocol import Protocol
    assert Protocol(text="sotu").text == "sotu"
    with pytest.raises(ValueError, match="unknown evaluation text"):
        Protocol(text="wikitext")
