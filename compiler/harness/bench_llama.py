"""llama.cpp in `accelc bench --against`: `llama-bench` on the artifact's source model as GGUF files.

The build: ACCELC_LLAMA_CPP names a folder holding llama-bench and llama-quantize (a llama.cpp build/bin;
scripts/build_llama_cpp.sh makes one), else llama-bench on PATH. Without one, the llama.cpp rows are skipped
with one line on stderr.

The files: the source GGUF itself ("source", when the artifact was compiled from a GGUF, as the packaged model
is) and each TYPE (F16, Q8_0, Q4_0, Q2_K by default) made from it by `llama-quantize --allow-requantize`. A
transformers source folder is first converted to F16 by the build's own convert_hf_to_gguf.py (found beside or
above the bin folder; it needs the `gguf` and `sentencepiece` packages, the latter from the build's python-deps
folder when there is one). Each file is made once and cached as
cache_dir()/llama-cpp/<source name>-<source sha256[:16]>/<TYPE>.gguf: the manifest's source hash is the key, so
reruns, and other artifacts compiled from the same source, reuse them.

The measure, per prompt: `llama-bench -m FILE -t THREADS -p P -n N -r 1 -o json` with P the prompt's length. Its
tgN record (N tokens decoded one at a time from an empty context, no sampling: llama-bench's tg128 at N=128) is
the decode figure, its ppP record (P tokens in one batch) the prefill one; llama-bench runs the two tests
independently, so tgN is the same with -p 0. Peak RSS is the llama-bench process's own (its VmHWM).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from .bench_engines import Timing

ENV = "ACCELC_LLAMA_CPP"
DEFAULT_TYPES = ("source", "F16", "Q8_0", "Q4_0", "Q2_K")
SKIP_LINE = (f"llama.cpp: no build found (set {ENV} to a llama.cpp build/bin folder, or put llama-bench on PATH; "
             "scripts/build_llama_cpp.sh builds one): llama.cpp rows skipped")


@dataclass(frozen=True)
class LlamaCpp:
    bench: Path
    quantize: Path | None
    convert: Path | None          # convert_hf_to_gguf.py of the same source tree


def find_llama_cpp(env: dict | None = None) -> LlamaCpp | None:
    """The llama.cpp build to use, or None when there is none. A set ACCELC_LLAMA_CPP without llama-bench in
    it is an error (a wrong setting), not a skip."""
    env = os.environ if env is None else env
    if env.get(ENV):
        folder = Path(env[ENV]).expanduser()
        bench = folder / "llama-bench"
        if not (bench.is_file() and os.access(bench, os.X_OK)):
            raise InputError(f"{ENV}={env[ENV]} has no executable llama-bench (point it at a llama.cpp build/bin "
                             "folder; scripts/build_llama_cpp.sh builds one)")
        quantize = folder / "llama-quantize"
        quantize = quantize if quantize.is_file() else None
    else:
        found = shutil.which("llama-bench", path=env.get("PATH", ""))
        if not found:
            return None
        bench = Path(found)
        q = shutil.which("llama-quantize", path=env.get("PATH", ""))
        quantize = Path(q) if q else None
        folder = bench.resolve().parent
    convert = next((d / "convert_hf_to_gguf.py" for d in [folder, *list(folder.parents)[:3]]
                    if (d / "convert_hf_to_gguf.py").is_file()), None)
    return LlamaCpp(bench, quantize, convert)


def parse_types(text: str) -> list[str]:
    types = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in types if not re.fullmatch(r"source|[A-Za-z0-9_]+", t)]
    if not types or bad:
        raise InputError(f"--llama-types wants a comma list of llama-quantize types (e.g. F16,Q8_0,Q4_0,Q2_K) or "
                         f"'source', not '{text}'")
    return list(dict.fromkeys(t if t == "source" else t.upper() for t in types))


def cache_folder(source: dict) -> Path:
    """Where the GGUF files of this source are cached: keyed by the source's name and sha256."""
    from ...models.sources import cache_dir
    sha = source.get("sha256") or hashlib.sha256(str(source.get("path")).encode()).hexdigest()
    name = re.sub(r"[^A-Za-z0-9._-]", "_", str(source.get("name") or "model"))
    return cache_dir() / "llama-cpp" / f"{name}-{sha[:16]}"


def source_gguf(source: dict) -> Path | None:
    """The GGUF file the artifact was compiled from, or None for a transformers folder. InputError when it was
    a GGUF that is no longer on this machine, or that changed since the compile."""
    fmt = source.get("format")
    if fmt == "packaged-gguf":
        from ...models.sources import packaged_gguf
        path = packaged_gguf(source["name"])
    elif fmt == "gguf":
        path = Path(source.get("path", ""))
        if not path.is_file():
            raise InputError(f"llama.cpp: the artifact's source GGUF {path} is not on this machine")
    else:
        return None
    from ..artifact import sha256_file
    if source.get("sha256") and sha256_file(path) != source["sha256"]:
        raise InputError(f"llama.cpp: {path} is not the GGUF the artifact was compiled from (sha256 differs)")
    return path


def _tail(text: str, n: int = 300) -> str:
    return " ".join(text.strip().split())[-n:]


def _make(cmd: list[str], out: Path, what: str, env: dict | None = None) -> Path:
    """Run a command that writes `out` through a partial file, renamed into place on success."""
    tmp = out.with_name(f".{out.name}.partial")
    tmp.unlink(missing_ok=True)
    r = subprocess.run([c if c != "{out}" else str(tmp) for c in cmd], capture_output=True, text=True, env=env)
    if r.returncode != 0 or not tmp.is_file():
        tmp.unlink(missing_ok=True)
        raise InputError(f"llama.cpp: {what} failed (exit {r.returncode}): {_tail(r.stderr or r.stdout)}")
    os.replace(tmp, out)
    return out


def _convert_env(convert: Path) -> dict:
    """convert_hf_to_gguf.py runs in this interpreter (torch, transformers, gguf), offline, with the build's own
    python-deps folder first on the path: it imports sentencepiece even for BPE vocabularies, and
    scripts/build_llama_cpp.sh installs that there rather than into the project's environment."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    deps = convert.parent / "python-deps"
    if deps.is_dir():
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(deps), env.get("PYTHONPATH")) if p)
    return env


def gguf_files(llama: LlamaCpp, source: dict, types: list[str], threads: int, say=lambda msg: None) -> dict:
    """type -> GGUF file for each requested type, made once and cached (see the module docstring)."""
    folder = cache_folder(source)
    folder.mkdir(parents=True, exist_ok=True)
    src = None
    if "source" in types or any(not (folder / f"{t}.gguf").is_file() for t in types if t != "source"):
        src = source_gguf(source)
    files = {}
    if "source" in types and src is not None:      # a transformers source has no file of its own: F16 is it
        files["source"] = src
    for t in (t for t in types if t != "source"):
        out = folder / f"{t}.gguf"
        if not out.is_file():
            files[t] = _convert_or_quantize(llama, source, src, folder, t, threads, say)
        else:
            files[t] = out
    return files


def _convert_or_quantize(llama: LlamaCpp, source: dict, src: Path | None, folder: Path, t: str, threads: int,
                         say) -> Path:
    out = folder / f"{t}.gguf"
    if src is None:                                  # a transformers folder: convert it to F16 first
        hf = Path(source.get("path", ""))
        f16 = folder / "F16.gguf"
        if not f16.is_file():
            if llama.convert is None:
                raise InputError(f"llama.cpp: the source is a transformers folder and no convert_hf_to_gguf.py was "
                                 f"found beside or above {llama.bench.parent}")
            if not (hf / "config.json").is_file():
                raise InputError(f"llama.cpp: the artifact's source folder {hf} is not on this machine")
            say(f"llama.cpp: converting {hf} to F16 GGUF (once, cached in {folder}) ...")
            _make([sys.executable, str(llama.convert), str(hf), "--outtype", "f16", "--outfile", "{out}"], f16,
                  "convert_hf_to_gguf.py", env=_convert_env(llama.convert))
        if t == "F16":
            return f16
        src = f16
    if llama.quantize is None:
        raise InputError(f"llama.cpp: {t} needs llama-quantize, which is not beside {llama.bench}")
    say(f"llama.cpp: llama-quantize {src.name} -> {t} (once, cached in {folder}) ...")
    return _make([str(llama.quantize), "--allow-requantize", str(src), "{out}", t, str(threads)], out,
                 f"llama-quantize to {t}")


def gguf_type(path: Path) -> str:
    """The file's weight type as llama.cpp names it (general.file_type: Q4_1, F16, ...), '?' when unknown."""
    try:
        from gguf import GGUFReader, LlamaFileType
        field = GGUFReader(str(path)).fields["general.file_type"]
        return LlamaFileType(int(field.parts[field.data[0]][0])).name.removeprefix("MOSTLY_")
    except Exception:
        return "?"


def _hwm_mb(pid: int) -> float:
    """The process's peak resident memory so far (Linux VmHWM, MB); 0 when unreadable."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0.0


def gguf_weight_bytes(path: Path) -> int:
    """Bytes of weights a decode step reads from this GGUF: every tensor, less the embedding table when a
    separate output.weight is the head (a token reads one row of it). The file's size when it is unreadable."""
    try:
        from gguf import GGUFReader
        sizes = {t.name: int(t.n_bytes) for t in GGUFReader(str(path)).tensors}
    except Exception:
        return path.stat().st_size
    embed = sizes.get("token_embd.weight", 0) if "output.weight" in sizes else 0
    return sum(sizes.values()) - embed


def run_child(cmd: list[str], poll_s: float = 0.02) -> tuple[int, str, str, float]:
    """-> (exit status, stdout, stderr, the child's peak RSS in MB; 0 where /proc is missing). The peak is its
    VmHWM, sampled every poll_s while it runs: wait4's ru_maxrss would also count this (large) process, whose
    high-water mark a forked child carries through exec on Linux."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        p = subprocess.Popen(cmd, stdout=out, stderr=err)
        peak = 0.0
        try:
            while p.poll() is None:
                peak = max(peak, _hwm_mb(p.pid))
                time.sleep(poll_s)
        except BaseException:
            p.kill()
            p.wait()
            raise
        out.seek(0)
        err.seek(0)
        return p.returncode, out.read().decode(errors="replace"), err.read().decode(errors="replace"), peak


def parse_bench_json(text: str) -> tuple[dict | None, dict]:
    """llama-bench's `-o json` output -> (the pp record or None, the tg record)."""
    try:
        recs = json.loads(text)
    except json.JSONDecodeError:
        raise InputError(f"llama-bench printed no JSON: {_tail(text)!r}") from None
    recs = [recs] if isinstance(recs, dict) else recs
    tg = next((r for r in recs if int(r.get("n_gen", 0)) > 0 and int(r.get("n_prompt", 0)) == 0), None)
    pp = next((r for r in recs if int(r.get("n_prompt", 0)) > 0 and int(r.get("n_gen", 0)) == 0), None)
    if tg is None or "avg_ns" not in tg:
        raise InputError(f"llama-bench's JSON has no tg record with avg_ns: {_tail(text)!r}")
    return pp, tg


class LlamaCppEngine:
    """llama-bench on one GGUF file: run(ids, n) times pp len(ids) and tg n in one llama-bench process."""

    def __init__(self, bench: Path, gguf: Path, label: str, threads: int):
        self.bench, self.gguf, self.threads = bench, Path(gguf), threads
        mb = self.gguf.stat().st_size / 1e6
        self.name = f"llama.cpp {label} ({mb:.0f} MB)"
        self.peak_rss_mb = 0.0                      # the llama-bench processes', not ours
        self.info = {"gguf": str(self.gguf), "file_mb": round(mb, 1),
                     "weight_bytes_per_token": gguf_weight_bytes(self.gguf)}   # its own roofline

    def run(self, ids: list[int], n: int) -> Timing:
        cmd = [str(self.bench), "-m", str(self.gguf), "-t", str(self.threads), "-p", str(len(ids)), "-n", str(n),
               "-r", "1", "-o", "json"]
        rc, out, err, rss = run_child(cmd)
        if rc != 0:
            raise InputError(f"llama-bench failed on {self.gguf.name} (exit {rc}): {_tail(err or out)}")
        self.peak_rss_mb = max(self.peak_rss_mb, rss)
        pp, tg = parse_bench_json(out)
        self.info.update({k: tg[k] for k in ("model_type", "build_commit", "build_number", "cpu_info") if k in tg})
        ttft = pp["avg_ns"] / 1e9 if pp else 0.0
        return Timing(ttft, int(pp["n_prompt"]) if pp else 0, int(tg["n_gen"]), tg["avg_ns"] / 1e9, int(tg["n_gen"]))


def llama_factories(llama: LlamaCpp | None, source: dict, types: list[str], threads: int, say) -> list:
    """[(name, factory)] for `accelc bench` (llama from find_llama_cpp()), or [] with the skip line when there is
    no build."""
    if llama is None:
        say(SKIP_LINE)
        return []
    files = gguf_files(llama, source, types, threads, say)
    out = []
    for t, path in files.items():
        label = f"source {gguf_type(path)}" if t == "source" else t
        out.append((f"llama.cpp {label}",
                    lambda path=path, label=label: LlamaCppEngine(llama.bench, path, label, threads)))
    return out
