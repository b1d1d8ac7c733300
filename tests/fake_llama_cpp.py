"""A fake llama.cpp build for tests: llama-bench, llama-quantize and convert_hf_to_gguf.py as small Python
scripts that print what the real ones print (llama-bench's `-o json` records) and log their arguments."""
from __future__ import annotations

import json
import sys
from pathlib import Path

# tg: 2 ms per token (500 tok/s); pp: 0.5 ms per token (2000 tok/s)
TG_NS_PER_TOKEN = 2_000_000
PP_NS_PER_TOKEN = 500_000

BENCH = r'''
import json, sys
from pathlib import Path
args = sys.argv[1:]
Path(__file__).with_name("calls.log").open("a").write("bench " + json.dumps(args) + "\n")
opt = {args[i]: args[i + 1] for i in range(0, len(args) - 1, 2) if args[i].startswith("-")}
if "FAIL" in Path(opt["-m"]).name:
    print("llama_model_load: error loading model: bad magic", file=sys.stderr)
    sys.exit(1)
import time
ballast = b"x" * (40 << 20)            # 40 MB resident for a while: the peak-RSS reading must see it
time.sleep(0.1)
base = {"build_commit": "fake123", "build_number": 7, "cpu_info": "Fake CPU", "model_filename": opt["-m"],
        "model_type": "llama ?B " + Path(opt["-m"]).stem, "model_size": 1000, "n_threads": int(opt["-t"]),
        "n_depth": 0}
recs = []
p, n = int(opt.get("-p", 512)), int(opt.get("-n", 128))
if p:
    ns = p * PP_NS_PER_TOKEN
    recs.append({**base, "n_prompt": p, "n_gen": 0, "avg_ns": ns, "stddev_ns": 0, "avg_ts": p / ns * 1e9,
                 "stddev_ts": 0, "samples_ns": [ns], "samples_ts": [p / ns * 1e9]})
if n:
    ns = n * TG_NS_PER_TOKEN
    recs.append({**base, "n_prompt": 0, "n_gen": n, "avg_ns": ns, "stddev_ns": 0, "avg_ts": n / ns * 1e9,
                 "stddev_ts": 0, "samples_ns": [ns], "samples_ts": [n / ns * 1e9]})
print("load time ...", file=sys.stderr)
print(json.dumps(recs, indent=2))
'''

QUANTIZE = r'''
import json, sys
from pathlib import Path
args = sys.argv[1:]
Path(__file__).with_name("calls.log").open("a").write("quantize " + json.dumps(args) + "\n")
pos = [a for a in args if not a.startswith("--")]
src, out, typ = pos[0], pos[1], pos[2]
Path(out).write_bytes(Path(src).read_bytes() + typ.encode())
'''

CONVERT = r'''
import json, os, sys
from pathlib import Path
args = sys.argv[1:]
env = {k: os.environ.get(k) for k in ("PYTHONPATH", "HF_HUB_OFFLINE")}
Path(__file__).parent.joinpath("build", "bin", "calls.log").open("a").write(
    "convert " + json.dumps(args) + "\n" + "convert-env " + json.dumps(env) + "\n")
out = args[args.index("--outfile") + 1]
assert args[args.index("--outtype") + 1] == "f16"
pad = int(os.environ.get("FAKE_GGUF_PAD", "0"))          # bytes of zeros after the header, for a file of some size
Path(out).write_bytes(b"GGUF-F16-of-" + Path(args[0]).name.encode() + bytes(pad))
'''


def _script(path: Path, body: str) -> Path:
    consts = f"PP_NS_PER_TOKEN = {PP_NS_PER_TOKEN}\nTG_NS_PER_TOKEN = {TG_NS_PER_TOKEN}\n"
    path.write_text(f"#!{sys.executable}\n{consts}{body}")
    path.chmod(0o755)
    return path


def make_fake_build(root: Path, quantize: bool = True, convert: bool = True) -> Path:
    """root/build/bin/{llama-bench,llama-quantize} and root/convert_hf_to_gguf.py; returns the bin folder."""
    bin_dir = root / "build" / "bin"
    bin_dir.mkdir(parents=True)
    _script(bin_dir / "llama-bench", BENCH)
    if quantize:
        _script(bin_dir / "llama-quantize", QUANTIZE)
    if convert:
        _script(root / "convert_hf_to_gguf.py", CONVERT)
    return bin_dir


def calls(bin_dir: Path) -> list[tuple[str, list[str]]]:
    log = bin_dir / "calls.log"
    if not log.is_file():
        return []
    return [(ln.split(" ", 1)[0], json.loads(ln.split(" ", 1)[1])) for ln in log.read_text().splitlines()]
