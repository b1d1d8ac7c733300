"""Where a pv-int tuning step's time goes, and what activation checkpointing and the V step's selection cost.

    .venv/bin/python scripts/pv_step_profile.py --bits 3 --steps 6 --out docs/passes/results/pv_step_profile_DATE.json

Each configuration runs in a fresh process (peak resident memory is per process): the model's Linears quantized
round-to-nearest at `--bits` (the step's cost does not depend on the codes' values, so no GPTQ), the int8
embedding, the fp32 teacher, then `--steps` V steps (tau 0.01, P step on the same gradients: what pv-int runs) on
batch x seqlen calibration windows. Per step: the forward + backward seconds (teacher, student, backward) and the
code-update seconds (every layer's V step), medians over the steps after the first. Configurations: checkpointing
on / off x the selection (farthest: passes/quantization/farthest.py; topk: torch.topk over every weight).
Raw JSON with machine, date, commit and command line; `--table FILE` prints a result's markdown table."""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from provenance import provenance

CHILD = r"""
import json, resource, sys, time
import torch
cfg = json.loads(sys.argv[1])
from accelc.models.sources import load_model
from accelc.models.corpus import calibration_batches
from accelc.passes.quantization import int_quant
from accelc.passes.quantization.codebook_linear import set_module
from accelc.passes.quantization.int_linear import IntGroupLinear, encode, sym_scales
from accelc.passes.quantization.pv_tuning import norm_parameters
from accelc.passes.training import use_bf16
bundle = load_model(cfg["model"])
model, ad = bundle.model, bundle.adapter
int_quant.quantize_embeddings(ad)
teacher = __import__("copy").deepcopy(model).eval().requires_grad_(False)
path_of = {id(m): n for n, m in model.named_modules()}
for name, lin in ad.linears().items():
    w = lin.weight.detach().float()
    wg = w.reshape(w.shape[0], -1, cfg["group"])
    s = sym_scales(wg, cfg["bits"]).half().float()
    set_module(model, path_of[id(lin)], IntGroupLinear(encode(wg, s, cfg["bits"]), s, cfg["bits"], lin.bias))
if cfg["select"] == "topk":
    int_quant.farthest = lambda x, n: x.topk(n).indices
bf16 = use_bf16(cfg["precision"], torch.device("cpu"))
tr = int_quant.IntPVTrainer(model, teacher, norm_parameters(ad), 1e-4, 1e-3, 0.0, 0.01, checkpoint=cfg["checkpoint"],
                            bf16=bf16)
ids = calibration_batches(bundle.tokenizer, cfg["batch"] * cfg["steps"], cfg["seqlen"], seed=0)
upd = [0.0]
orig = tr._update_codes
def timed(*a, **k):
    t = time.perf_counter()
    r = orig(*a, **k)
    upd[0] += time.perf_counter() - t
    return r
tr._update_codes = timed
rows = []
for i in range(cfg["steps"]):
    upd[0] = 0.0
    t = time.perf_counter()
    loss, frac = tr.v_step(ids[i * cfg["batch"]:(i + 1) * cfg["batch"]], tau=0.01, also_p=True)
    total = time.perf_counter() - t
    rows.append({"step_s": total, "update_codes_s": upd[0], "loss": loss, "changed": frac})
print("RESULT " + json.dumps({"per_step": rows, "bf16": bf16, "threads": torch.get_num_threads(),
                              "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def table(path: str) -> str:
    d = json.loads(Path(path).read_text())
    lines = ["| checkpointing : selection | step s | forward + backward s | code updates s | peak RSS MB |",
             "| --- | --- | --- | --- | --- |"]
    for r in d["rows"]:
        m = r["median"]
        lines.append(f"| {r['config']} | {m['step_s']:.2f} | {m['forward_backward_s']:.2f} | {m['update_codes_s']:.2f} | "
                     f"{r['peak_rss_mb']:,.0f} |")
    r0, mach = d["rows"][0], d["machine"]
    steps = len(r0.get("per_step") or r0["steps"])        # 2026-12-06's first file kept the list under "steps"
    return (f"Measured {d['date']} on {mach.get('cpu')} ({mach.get('cores')} cores), commit {d['commit'][:7]}; "
            f"int{r0['bits']} g{r0['group']}, batch {r0['batch']} x {r0['seqlen']}, {'bf16' if r0['bf16'] else 'f32'}, "
            f"{r0['threads']} threads; medians of steps 2-{steps}. Raw: `{path}`.\n\n" + "\n".join(lines))


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--table":
        print(table(sys.argv[2]))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--bits", type=int, default=3)
    ap.add_argument("--group", type=int, default=64)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seqlen", type=int, default=256)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--configs", nargs="+", default=["on:topk", "on:farthest", "off:farthest"],
                    help="CHECKPOINT:SELECT, checkpoint on|off, select topk|farthest")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    rows = []
    for c in a.configs:
        ck, sel = c.split(":")
        cfg = {"model": a.model, "bits": a.bits, "group": a.group, "batch": a.batch, "seqlen": a.seqlen,
               "steps": a.steps, "precision": a.precision, "checkpoint": ck == "on", "select": sel}
        p = subprocess.run([sys.executable, "-c", CHILD, json.dumps(cfg)], capture_output=True, text=True)
        line = next((ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if line is None:
            raise SystemExit(f"{c}: {(p.stderr.strip().splitlines() or ['no output'])[-1]}")
        got = json.loads(line[7:])
        later = got["per_step"][1:] or got["per_step"]
        med = {k: round(statistics.median(s[k] for s in later), 3) for k in ("step_s", "update_codes_s")}
        row = {"config": c, **cfg, **got, "median": {**med, "forward_backward_s": round(med["step_s"] - med["update_codes_s"], 3)}}
        rows.append(row)
        print(c, json.dumps(row["median"]), f"peak RSS {got['peak_rss_mb']:.0f} MB", file=sys.stderr, flush=True)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({**provenance(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
