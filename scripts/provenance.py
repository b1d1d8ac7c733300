"""What every benchmark script records beside its figures: the machine (CPU model, cores, ISA flags,
memory), the date, the git commit and the command line, read by the script itself."""
from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ISA = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8", "fma")


def machine() -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "cores": os.cpu_count()}
    try:
        text = Path("/proc/cpuinfo").read_text()
        model = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")), None)
        flags = next((ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), [])
        info.update(cpu=model, isa=[f for f in ISA if f in flags])
    except OSError:
        info["cpu"] = platform.processor()
    torch = sys.modules.get("torch")       # a GPU the run could use (a lent one), when the script uses torch
    if torch is not None and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["torch"] = torch.__version__
    try:
        mem = next(ln for ln in Path("/proc/meminfo").read_text().splitlines() if ln.startswith("MemTotal"))
        info["memory_gib"] = round(int(mem.split()[1]) / 2**20, 1)
    except (OSError, StopIteration):
        pass
    return info


def git_commit(repo: Path = ROOT) -> str:
    if os.environ.get("ACCELC_COMMIT"):
        # set by scripts/gpu_run.sh: a lent GPU machine's copy of the working tree may carry a stale .git
        return os.environ["ACCELC_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


PACKAGES = ("compiler", "passes", "runtime", "targets", "models")


def shim(checkout: Path) -> Path:
    """A folder with accelc/<package> links into `checkout`, for PYTHONPATH (runs that checkout's code)."""
    import tempfile
    d = Path(tempfile.mkdtemp(prefix="accelc-shim-"))
    (d / "accelc").mkdir()
    for p in PACKAGES:
        (d / "accelc" / p).symlink_to(Path(checkout).resolve() / p)
    return d


def provenance() -> dict:
    return {"machine": machine(), "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "commit": git_commit(), "command": " ".join([sys.executable, *sys.argv])}


def emit(result: dict, path: str | None = None) -> str:
    """Print the result with the provenance in front, as JSON, and write it to `path` when given."""
    import json
    text = json.dumps({**provenance(), **result}, indent=1)
    print(text)
    if path:
        Path(path).write_text(text)
    return text


def add_row(result: dict, row: dict, out) -> None:
    """Append a benchmark row, echo it on stderr and rewrite the raw JSON (so an interrupted run keeps its rows)."""
    import json
    result["rows"].append(row)
    print(json.dumps(row), file=sys.stderr, flush=True)
    Path(out).write_text(json.dumps(result, indent=1))
