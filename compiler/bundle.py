"""The object that passes transform: a model, its tokenizer and what passes attach to it."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class ModelBundle:
    """A transformers causal LM plus everything the pipeline has learned or produced about it.

    model      the torch module (a transformers *ForCausalLM, possibly rewritten by passes)
    tokenizer  its tokenizer
    adapter    an accelc.models.adapter.ArchAdapter that locates layers, projections, norms
    source     where it came from: {"name", "path", "sha256", "format"}
    records    what passes attach, by key: "calibration", "pruning", "quantization", "drafter",
               "cache", "export", "validation" ... (plain data, JSON-serialisable where it goes
               into the manifest)
    files      files produced for the artifact: name relative to the artifact root -> path on disk
    workdir    the staging directory in which passes write files (the artifact's temp dir)
    """

    model: Any
    tokenizer: Any
    adapter: Any
    source: dict[str, Any] = field(default_factory=dict)
    records: dict[str, Any] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)
    workdir: Path | None = None

    @property
    def config(self):
        return self.model.config

    def add_file(self, name: str, path: Path) -> None:
        self.files[name] = Path(path)
