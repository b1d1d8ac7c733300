"""Passes compose (issue 14): every pair of --prune / --quantize / --drafter / --weights values the CLI accepts
appears in at least one compile of a tiny model, and each compile either writes a validated artifact or is
refused before the model loads with one clear line."""
import itertools
import json

import pytest

import accelc
from accelc.compiler.errors import InputError
from accelc.models.tiny import byte_tokenizer, tiny_model

C = "samples=4,seqlen=32"
CB = f"{C},kmeans=2,cb_steps=2"
PRUNE = [None, "magnitude:0.5", f"wanda:0.5,{C}", f"dsnot:0.5,{C}", f"cfsp:0.25,round=32,{C}",
         f"cfsp-uniform:0.25,round=32,{C}", "channel-magnitude:0.25,round=32", f"wanda-sp:0.25,round=32,{C}",
         f"flap:0.25,round=32,{C}"]
QUANTIZE = [None, f"aqlm:1x8g8,{CB}", f"pv:1x4g8,{CB},steps=2,batch=2", f"ste:1x8g8,{CB},steps=2,batch=2", "rtn:2g32"]
DRAFTER = [None, "fused:layers=1,steps=4,seq_len=32,windows=4,holdout=1,batch=2"]
WEIGHTS = ["fp32", "fp16", "int8", "int4"]
CODEBOOK = ("aqlm", "pv", "ste")


def matrix() -> list[tuple]:
    """One row per (prune, quantize) pair; drafter and weights assigned so that every pair of any two options
    is covered (checked by test_matrix_covers_every_pair)."""
    rows = []
    for i, p in enumerate(PRUNE):
        for j, q in enumerate(QUANTIZE):
            rows.append((p, q, DRAFTER[(i + j + j // 2) % 2], WEIGHTS[(i + j) % 4]))
    return rows


def refused(row) -> bool:
    """The one combination refused by design: a fused drafter after codebook quantization."""
    return row[2] is not None and (row[1] or "").split(":")[0] in CODEBOOK


def test_matrix_covers_every_pair():
    rows = matrix()
    for (a, va), (b, vb) in itertools.combinations(enumerate((PRUNE, QUANTIZE, DRAFTER, WEIGHTS)), 2):
        have = {(r[a], r[b]) for r in rows}
        missing = [pair for pair in itertools.product(va, vb) if pair not in have]
        assert not missing, (a, b, missing)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    d = tmp_path_factory.mktemp("composition")
    tiny_model("llama", vocab_size=257).save_pretrained(d / "src")
    byte_tokenizer().save_pretrained(d / "src")
    (d / "calib.txt").write_text("The quick brown fox jumps over the lazy dog. Plain sentences to calibrate on. " * 40)
    return d


@pytest.mark.parametrize("row", matrix(), ids=lambda r: "|".join(str(x).split(",")[0] for x in r))
def test_composed_compile(row, source, tmp_path, monkeypatch):
    prune, quantize, drafter, weights = row
    import accelc.models.sources as sources
    loads = []
    real = sources.load_model
    monkeypatch.setattr(sources, "load_model", lambda *a, **k: loads.append(1) or real(*a, **k))
    kw = dict(prune=prune, quantize=quantize, drafter=drafter, weights=weights, calib=str(source / "calib.txt"),
              cache_len=64, prefill_chunk=8)          # the cpu target's default formats
    if refused(row):
        with pytest.raises(InputError, match="cannot follow --quantize") as e:
            accelc.compile(str(source / "src"), "cpu", tmp_path / "art", **kw)
        assert "\n" not in str(e.value) and not loads and not (tmp_path / "art").exists()
        return
    out = accelc.compile(str(source / "src"), "cpu", tmp_path / "art", **kw)
    m = json.loads((out / "manifest.json").read_text())
    ran = [p["name"] for p in m["passes"]]
    assert ("validate" in ran) and all(r["greedy_agreement"] >= 0.6 for r in m["records"]["validation"]["backends"].values())
    assert bool(prune) == any(n.startswith("prune") for n in ran)
    assert bool(quantize) == any(n.startswith("quantize") for n in ran)
    assert bool(drafter) == ("validate-drafter" in ran)
    assert m["options"]["weights"] == weights
    native = "native/model.json" in m["files"]
    bits8 = not quantize or not quantize.startswith(CODEBOOK) or "x8g" in quantize
    assert native == bits8          # a 4-bit codebook leaves the native format out, the rest keep it


def test_native_with_another_codebook_width_is_refused_before_the_load(source, tmp_path, monkeypatch):
    import accelc.models.sources as sources
    monkeypatch.setattr(sources, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    with pytest.raises(InputError, match="native format runs 8-bit codebooks"):
        accelc.compile(str(source / "src"), "cpu", tmp_path / "art", quantize="pv:1x4g8", formats="openvino,native")
