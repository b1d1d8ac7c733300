"""Where an OpenVINO artifact's resident memory goes (issue 16: OpenVINO holds far more than the weights).

    .venv/bin/python scripts/ov_memory.py fp32=out/s-fp32 nncf-int4=out/nncf-int4 pv-int2=out/pv-int2 \
        --empty --out docs/passes/results/ov_memory_DATE.json

Each artifact is opened in a fresh process on accelc's OpenVINO backend (f32 inference precision, as bench_int.py's
probe), and its resident memory is split by mapping (/proc/self/smaps) at each phase: after the imports, after
loading (read + compile), after prefilling a 16-token prompt, after decoding `--new` tokens. Mappings: the IR's
weight file (.bin, memory-mapped by OpenVINO: the original constants), shared libraries, and anonymous memory
(the plugin's own copies of the weights, its buffers, the KV cache, Python). Then the weight file's pages are
dropped from the process (madvise MADV_DONTNEED on its read-only mappings: clean file pages, re-read from the file
when touched) and the process prefills and decodes again: what of the weight file comes back is what inference
still reads from the original constants; the rest was only read once, when the plugin copied it.
`--table FILE` prints the markdown table of a result. `--empty` adds the 2-layer model of bench_int.py with the first artifact's tokenizer (the fixed overhead).
Writes raw JSON with machine, date, commit and command line (scripts/provenance.py).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from bench_native import _probe
from provenance import provenance

PROBE = r"""
import ctypes, json, re, sys, time
art, threads, new = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])

def split():
    out = {"weights_file": 0, "libraries": 0, "anonymous": 0, "other": 0}
    cur = None
    for ln in open("/proc/self/smaps"):
        p = ln.split()
        if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", ln):
            name = p[5] if len(p) > 5 else ""
            cur = ("weights_file" if name.endswith(".bin") else "libraries" if ".so" in name
                   else "anonymous" if name in ("", "[heap]", "[stack]") else "other")
        elif p[0] == "Rss:":
            out[cur] += int(p[1])
    st = open("/proc/self/status").read()
    out["rss"] = int(st.split("VmRSS:")[1].split()[0])
    return {k: round(v / 1024, 1) for k, v in out.items()}

phases = {"start": split()}
import accelc
from accelc.runtime.decode import decode_one, prefill
from accelc.runtime.generate import encode_prompt
phases["imported"] = split()
m = accelc.load(art, backend="openvino", threads=threads, precision="f32")
a = m.artifact
phases["loaded"] = split()
ids = encode_prompt(a.tokenizer, "Write a short story about a robot who learns to paint. Once upon a time", raw=True)

def run(n):
    st = a.new_state(len(ids) + n + 1)
    tok = int(prefill(st, ids).argmax())
    phases.setdefault("prefilled", split())
    for _ in range(n - 1):
        tok = int(decode_one(st, tok).argmax())

run(new)
phases["decoded"] = split()
libc = ctypes.CDLL(None, use_errno=True)
libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
dropped = []
for ln in open("/proc/self/maps"):
    f = ln.split()
    if len(f) > 5 and f[5].endswith(".bin"):
        if "w" in f[1]:
            raise SystemExit("the weight file is mapped writable: not dropping its pages")
        lo, hi = (int(x, 16) for x in f[0].split("-"))
        if libc.madvise(lo, hi - lo, 4):        # MADV_DONTNEED
            raise SystemExit(f"madvise failed: errno {ctypes.get_errno()}")
        dropped.append(f[5])
phases["weights_dropped"] = split()
run(new)
phases["decoded_again"] = split()
print("RESULT " + json.dumps({"phases": phases, "dropped": sorted(set(dropped))}))
"""


def bin_mb(art: Path) -> float:
    """Size of the decoder IR's weight file (the .bin beside its .xml, or the one its record names)."""
    g = json.loads((art / "manifest.json").read_text())["graphs"]["decoder"]
    b = art / g["openvino_bin"] if g.get("openvino_bin") else (art / g["openvino"]).with_suffix(".bin")
    return round(b.stat().st_size / 2**20, 1)


def table(path: str) -> str:
    d = json.loads(Path(path).read_text())
    head = ("| artifact | weight file MiB | RSS loaded | RSS decoded | of it: weight file | anonymous | libraries | "
            "weight file still read after its pages are dropped | RSS decoded again |")
    lines = [head, "|" + " --- |" * 9]
    for label, r in d["rows"].items():
        if "phases" not in r:
            lines.append(f"| {label} | {r['bin_mb']} | error |" + " |" * 6)
            continue
        p = r["phases"]
        lines.append(f"| {label} | {r['bin_mb']:.1f} | {p['loaded']['rss']:.0f} | {p['decoded']['rss']:.0f} | "
                     f"{p['decoded']['weights_file']:.0f} | {p['decoded']['anonymous']:.0f} | "
                     f"{p['decoded']['libraries']:.0f} | {p['decoded_again']['weights_file']:.0f} | "
                     f"{p['decoded_again']['rss']:.0f} |")
    m = d["machine"]
    return (f"Measured {d['date']} on {m.get('cpu')} ({m.get('cores')} cores), commit {d['commit'][:7]}, "
            f"{d['threads']} threads, {d['new_tokens']} new tokens; MiB. Raw: `{path}`.\n\n" + "\n".join(lines))


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--table":
        print(table(sys.argv[2]))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("artifacts", nargs="+", help="LABEL=DIR")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--new", type=int, default=128, help="decoded tokens (at least 1)")
    ap.add_argument("--empty", action="store_true", help="add the 2-layer fixed-overhead model (bench_int.py)")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    arts = dict(s.split("=", 1) for s in a.artifacts)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        if a.empty:
            from bench_int import empty_artifact
            arts["empty"] = str(empty_artifact(Path(tmp), Path(next(iter(arts.values())))))
        for label, d in arts.items():
            got = _probe(PROBE, d, a.threads, a.new)
            rows[label] = {"artifact": d if label != "empty" else "2-layer model", **got, "bin_mb": bin_mb(Path(d))}
            print(label, json.dumps(got.get("phases", {}).get("decoded", got))[:300], file=sys.stderr, flush=True)
    result = {**provenance(), "threads": a.threads, "new_tokens": a.new, "unit": "MiB", "rows": rows}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
