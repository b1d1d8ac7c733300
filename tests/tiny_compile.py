"""Compile a tiny random Llama with the cpu target's pipeline into an artifact, as `accelc compile` does (tests that
need a real artifact of their own options: drafters)."""
from pathlib import Path

from accelc.compiler.artifact import publish, staging, write_manifest
from accelc.compiler.manager import PassManager
from accelc.models.corpus import split_text
from accelc.models.sources import load_model
from accelc.models.tiny import byte_tokenizer, tiny_model
from accelc.targets import get_target

EOS = 256


def compile_tiny(d: Path, options_for, target: str = "cpu") -> tuple[Path, object]:
    """-> (artifact dir d/art, bundle). options_for(calib_path) -> CompileOptions; calib is Brown eval text."""
    calib = d / "calib.txt"
    calib.write_text(split_text("eval")[:20000])
    src = d / "source"
    tiny_model("llama", seed=0, vocab_size=EOS + 1, initializer_range=0.25).save_pretrained(src)
    byte_tokenizer().save_pretrained(src)
    bundle = load_model(str(src))
    out = d / "art"
    with staging(out) as stage:
        bundle.workdir = stage
        tgt = get_target(target)
        log = PassManager(tgt.pipeline(options_for(str(calib)))).run(bundle)
        bundle.tokenizer.save_pretrained(stage / "tokenizer")
        write_manifest(stage, {"source": bundle.source, "target": {"name": tgt.name, "static_shapes": tgt.static_shapes,
                                                                   "devices": ["cpu"]},
                               "options": {"weights": "fp32"}, "model": bundle.adapter.describe(),
                               "graphs": bundle.records["graphs"],
                               "records": {k: v for k, v in bundle.records.items()
                                           if k in ("native", "kv_cache")},   # native weights; the cache spec and training
                               "passes": [r.to_json() for r in log]})
        publish(stage, out, force=False)
    return out, bundle
