"""A file cut into parts of at most part_mb MB, named NAME.part0, NAME.part1, ...: how trained weights come back from
a lent GPU machine, whose returned files are limited in size (scripts/gpu_run.sh). Join with `cat NAME.part* > NAME`."""
from __future__ import annotations

from pathlib import Path


def cut(path: Path, out_dir: Path, part_mb: float, remove: bool = False) -> list[str]:
    """path -> out_dir/NAME.partK; -> the part names. remove: delete path afterwards."""
    blob, size = Path(path).read_bytes(), int(part_mb * 2**20)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(0, len(blob), size):
        part = out_dir / f"{Path(path).name}.part{i // size}"
        part.write_bytes(blob[i:i + size])
        names.append(part.name)
    if remove:
        Path(path).unlink()
    return names
