"""verify() checks every file's sha256 and names the bad one."""
import json

import pytest

from accelc.compiler.artifact import publish, read_manifest, staging, verify, write_manifest
from accelc.compiler.errors import ArtifactError


@pytest.fixture
def artifact(tmp_path):
    out = tmp_path / "art"
    with staging(out) as stage:
        (stage / "graphs").mkdir()
        (stage / "graphs" / "decoder.bin").write_bytes(bytes(range(256)) * 64)
        (stage / "tokenizer").mkdir()
        (stage / "tokenizer" / "tokenizer.json").write_text('{"a": 1}')
        (stage / "graphs" / "decoder.xml").write_text("<net/>")
        write_manifest(stage, {"source": {"name": "x"}, "model": {"layers": 1, "kv_heads": 1, "head_dim": 4},
                               "graphs": {"decoder": {"openvino": "graphs/decoder.xml"}}})
        publish(stage, out, force=False)
    return out


def test_clean_artifact_verifies(artifact):
    m = verify(artifact)
    assert set(m["files"]) == {"graphs/decoder.bin", "graphs/decoder.xml", "tokenizer/tokenizer.json"}
    assert m["files"]["graphs/decoder.bin"]["bytes"] == 256 * 64


def test_flipped_byte_names_the_file(artifact):
    p = artifact / "graphs" / "decoder.bin"
    data = bytearray(p.read_bytes())
    data[1000] ^= 0x01                                         # same size, one bit different
    p.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="graphs/decoder.bin"):
        verify(artifact)


def test_missing_file_and_bad_manifest(artifact):
    (artifact / "tokenizer" / "tokenizer.json").unlink()
    with pytest.raises(ArtifactError, match="missing: tokenizer/tokenizer.json"):
        verify(artifact)
    (artifact / "manifest.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="corrupt"):
        read_manifest(artifact)
    (artifact / "manifest.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ArtifactError, match="not an accelc manifest"):
        read_manifest(artifact)


def test_open_artifact_refuses_a_corrupt_artifact(artifact):
    from accelc.runtime.artifact import open_artifact
    p = artifact / "tokenizer" / "tokenizer.json"
    p.write_text('{"a": 2}')
    with pytest.raises(ArtifactError, match="tokenizer/tokenizer.json"):
        open_artifact(artifact)
