"""An optimum-style OpenVINO folder in the artifact (openvino/), so the OpenVINO ecosystem's own tools run
what accelc compiled:

    openvino_genai.LLMPipeline("ARTIFACT/openvino", "CPU")
    optimum.intel.OVModelForCausalLM.from_pretrained("ARTIFACT/openvino", export=False)

The folder holds:
  - openvino_model.xml/.bin: the decoder as a stateful IR (KV cache in ReadValue/Assign variables; inputs
    input_ids, attention_mask, position_ids, beam_idx; output logits), made by the same rewrite the runtime
    applies at load (runtime/backends/ov_stateful.py make_stateful) to the validated graphs/decoder.xml;
  - openvino_tokenizer.xml / openvino_detokenizer.xml (openvino-tokenizers), the transformers tokenizer files,
    config.json and generation_config.json.
Weights are stored once: graphs/decoder.xml is rewritten to read its constants from openvino_model.bin
(recorded as the graph's `openvino_bin`; every constant is checked byte for byte after the move) and
graphs/decoder.bin is removed.
What survives there: pruning, NNCF int8/int4 and fp16 weights (the same IR); codebook (aqlm/pv) weights run
through their decompression subgraph, expanded at load as on accelc's OpenVINO backend; drafters do not
(openvino-genai's speculative decoding takes a separate draft model folder).
"""
from __future__ import annotations

import hashlib
import json
import logging
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from ...compiler.bundle import ModelBundle
from ...compiler.errors import InputError, PreconditionError
from ...compiler.pass_base import Pass, PassConfig, PassResult

log = logging.getLogger(__name__)
FOLDER = "openvino"
MODEL_XML = f"{FOLDER}/openvino_model.xml"
MODEL_BIN = f"{FOLDER}/openvino_model.bin"


@dataclass(frozen=True)
class ExportGenAIConfig(PassConfig):
    tokenizer: bool = True          # convert the tokenizer with openvino-tokenizers (genai needs it)


def _consts(xml: Path):
    """(data element, offset, size) of every Const layer with weights in an IR."""
    tree = ET.parse(xml)
    out = []
    for layer in tree.getroot().iter("layer"):
        if layer.get("type") == "Const":
            data = layer.find("data")
            if data is not None and data.get("offset") is not None and data.get("size") is not None:
                out.append((data, int(data.get("offset")), int(data.get("size"))))
    return tree, out


def _mapped(path: Path):
    """A read-only memory map of a weight file (never loaded whole: 0.5B-parameter models have GB of weights)."""
    import mmap
    with open(path, "rb") as f:
        if f.seek(0, 2) == 0:
            return b""
        return memoryview(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ))


def share_weights(xml: Path, bin_path: Path, shared_xml: Path, shared_bin: Path) -> dict:
    """Point every constant of `xml` (stored in `bin_path`) at identical bytes in `shared_bin` (appending the few
    that `shared_xml` does not have), rewrite `xml` in place; -> counts. The caller removes `bin_path`."""
    index = {}
    blob = _mapped(shared_bin)
    for _, off, size in _consts(shared_xml)[1]:
        index.setdefault(hashlib.sha256(blob[off:off + size]).digest(), off)
    end = len(blob)
    del blob
    tree, consts = _consts(xml)
    own = _mapped(bin_path)
    appended = moved = 0
    with open(shared_bin, "ab") as f:
        for data, off, size in consts:
            chunk = own[off:off + size]
            key = hashlib.sha256(chunk).digest()
            if key not in index:
                index[key] = end
                f.write(chunk)
                end += size
                appended += size
            data.set("offset", str(index[key]))
            moved += 1
    tree.write(xml, encoding="utf-8", xml_declaration=True)
    # the moved IR must read exactly the bytes it read before, constant by constant
    blob = _mapped(shared_bin)
    for (data, off, size), (_, new, _) in zip(consts, _consts(xml)[1]):
        if own[off:off + size] != blob[new:new + size]:
            raise PreconditionError(f"{xml.name}: constant at {off} differs after moving it to {shared_bin.name}")
    return {"constants": moved, "appended_bytes": appended}


def _save_tokenizer(tokenizer, folder: Path) -> None:
    import openvino as ov
    try:
        from openvino_tokenizers import convert_tokenizer
        tok, detok = convert_tokenizer(tokenizer, with_detokenizer=True)
    except Exception as e:
        raise InputError(f"openvino-tokenizers cannot convert this model's tokenizer ({type(e).__name__}: "
                         f"{str(e)[:160]}); compile without the genai format (--formats openvino,onnx)") from None
    ov.save_model(tok, str(folder / "openvino_tokenizer.xml"))
    ov.save_model(detok, str(folder / "openvino_detokenizer.xml"))


class ExportGenAIPass(Pass):
    name = "export-genai"
    config_class = ExportGenAIConfig

    def requires(self, bundle: ModelBundle) -> None:
        rec = (bundle.records.get("graphs") or {}).get("decoder")
        if rec is None or not rec.get("openvino"):
            raise PreconditionError("no OpenVINO decoder graph (the genai format needs the openvino format)")
        if rec.get("static"):
            raise PreconditionError("the genai folder holds a dynamic stateful graph; static targets have none")

    def call(self, bundle: ModelBundle) -> PassResult:
        import openvino as ov
        from ...runtime.backends.ov_stateful import make_stateful
        stage, rec = bundle.workdir, bundle.records["graphs"]["decoder"]
        folder = stage / FOLDER
        folder.mkdir(exist_ok=True)
        xml = stage / rec["openvino"]
        own_bin = xml.with_suffix(".bin")
        model = ov.Core().read_model(str(xml))
        layers = make_stateful(model)
        ov.save_model(model, str(stage / MODEL_XML), compress_to_fp16=False)
        del model
        moved = share_weights(xml, own_bin, stage / MODEL_XML, stage / MODEL_BIN)
        own_bin.unlink()
        bundle.files.pop(own_bin.relative_to(stage).as_posix(), None)
        rec["openvino_bin"] = MODEL_BIN
        if self.config.tokenizer:
            _save_tokenizer(bundle.tokenizer, folder)
        bundle.tokenizer.save_pretrained(folder)
        bundle.model.config.save_pretrained(folder)
        gen = getattr(bundle.model, "generation_config", None)
        if gen is not None:
            gen.save_pretrained(folder)
        for p in folder.iterdir():
            bundle.add_file(p.relative_to(stage).as_posix(), p)
        bundle.records["genai"] = {"folder": FOLDER, "stateful_layers": layers, "tokenizer": self.config.tokenizer,
                                   "shared_weights": MODEL_BIN}
        return PassResult(True, {"stateful_layers": layers, **moved,
                                 "bin_mb": round((stage / MODEL_BIN).stat().st_size / 1e6, 1)})

    def ensures(self, bundle: ModelBundle, result: PassResult) -> None:
        for rel in (MODEL_XML, MODEL_BIN):
            if not (bundle.workdir / rel).is_file():
                raise PreconditionError(f"{rel} was not written")
        cfg = json.loads((bundle.workdir / FOLDER / "config.json").read_text())
        if not cfg.get("model_type"):
            raise PreconditionError("openvino/config.json has no model_type")
