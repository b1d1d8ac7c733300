"""The exported-graph contract has one owner (compiler/graph.py): no other module of the package spells a graph
input or output name in a string (docstrings aside), and the runtime picks its graphs by role from a table."""
import ast
import re
from pathlib import Path

import pytest

from accelc.compiler import graph
from accelc.compiler.errors import ArtifactError

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ("compiler", "passes", "runtime", "targets", "models")
# the unambiguous graph names; "input_ids" and "logits" are also transformers' own keys, so they are not scanned
NAMES = re.compile(r"\b(past_key|past_value|new_key|new_value)\.|^(position_ids|attention_mask|hidden_in|hidden_out|"
                   r"beam_idx)$")


def _docstrings(tree) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                out.add(id(first.value))
    return out


def spelled_names(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    skip = _docstrings(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            if NAMES.search(node.value):
                where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
                found.append(f"{where}:{node.lineno}: {node.value[:40]!r}")
    return found


def test_no_module_outside_the_contract_spells_graph_names():
    files = [p for d in PACKAGE for p in (ROOT / d).rglob("*.py") if p != ROOT / "compiler" / "graph.py"]
    assert len(files) > 50
    found = [hit for p in files for hit in spelled_names(p)]
    assert not found, "graph names spelled outside compiler/graph.py:\n" + "\n".join(found)


def test_the_scan_finds_a_spelled_name(tmp_path):
    """The check can fail: a module that writes a cache input's name itself is caught."""
    bad = tmp_path / "probe.py"
    bad.write_text('"""A docstring may say past_key.0."""\nNAME = "past_key.%d" % 0\nMASK = "attention_mask"\n')
    assert len(spelled_names(bad)) == 2


def test_names_and_roles():
    assert graph.input_names(2, first=3, input="hidden") == ["hidden_in", "position_ids", "attention_mask",
                                                             "past_key.3", "past_value.3", "past_key.4", "past_value.4"]
    assert graph.output_names(1) == ["logits", "new_key.0", "new_value.0"]
    assert graph.past_layers(["past_key.8", "past_value.8", "past_key.10", "input_ids"]) == [8, 10]
    assert graph.count_layers(graph.input_names(3), "g") == 3
    with pytest.raises(ArtifactError, match="missing inputs: attention_mask"):
        graph.count_layers([n for n in graph.input_names(3) if n != "attention_mask"], "g")


def test_decoder_roles_table():
    dyn = {"decoder": {"role": "decoder", "static": False}, "draft_trunk": {"role": "trunk"}}
    assert graph.decoder_roles(dyn) == (False, {"decoder": dyn["decoder"]})
    static = {"prefill": {"static": True}, "decode": {"static": True}}       # a manifest from before roles
    assert graph.decoder_roles(static)[0] is True and set(graph.decoder_roles(static)[1]) == {"prefill", "decode"}
    renamed = {"main": {"role": "decoder", "static": False}}                   # the role decides, not the name
    assert graph.decoder_roles(renamed)[1] == {"decoder": renamed["main"]}
    with pytest.raises(ArtifactError, match="no decoder graph"):
        graph.decoder_roles({"draft_trunk": {"role": "trunk"}})
    with pytest.raises(ArtifactError, match="'rolling' KV cache, which this runtime does not know"):
        graph.decoder_roles({"decoder": {"role": "decoder", "cache": "rolling"}})


def test_device_order_follows_the_manifest(monkeypatch):
    """The runtime tries the devices the artifact's target recorded, in that order; without a record, npu, cuda,
    cpu. (A cpu artifact is not tried on an NPU the machine may have.)"""
    from accelc.runtime import device
    tried = []

    def why_not(b, d, manifest, graph):
        tried.append(d)
        return None if d == "cpu" else "absent"
    monkeypatch.setattr(device, "why_not", why_not)
    monkeypatch.setattr(device, "cpu_order", lambda manifest: ("openvino",))
    choice = device.select({"target": {"devices": ["cpu"]}}, {})
    assert tried == ["cpu"] and choice.device == "cpu" and "first available of cpu" in choice.reason
    tried.clear()
    device.select({"target": {"devices": ["npu", "cpu"]}}, {})
    assert tried == ["npu", "cpu"]
    tried.clear()
    device.select({}, {})
    assert tried == ["npu", "cuda", "cpu"]
