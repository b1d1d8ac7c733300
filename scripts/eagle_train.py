"""Run the EAGLE drafter pass alone (no export) for one or more --drafter eagle specs and record what it measures:
the training's steps, time, device and loss, and the drafter's per-position acceptance in greedy generation on
held-out prompts of the evaluation split (issue 19).

    .venv/bin/python scripts/eagle_train.py --specs "eagle:seconds=100,windows=8192,batch=64" --out FILE.json

Training runs where the pass trains (device=auto: a CUDA GPU when torch sees one). The trained weights are cached
under $ACCELC_CACHE/eagle/ by model, windows and options, so `accelc compile --drafter SPEC` with the same spec
reuses them. --keep-weights DIR also writes each finished training's weights without AdamW's moments (the file
`accelc compile` reads, a third of the size), cut into parts of at most --part-mb MB: how weights trained on a lent
GPU machine come back (scripts/gpu_run.sh; join the parts with `cat NAME.part* > $ACCELC_CACHE/eagle/NAME`).
Raw JSON with machine, date, commit and command line.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from parts import cut
from provenance import add_row, provenance


def keep_weights(resume: Path, out_dir: Path, part_mb: float) -> list[str]:
    """resume (weights, AdamW moments) -> out_dir/NAME.partK: the weights and the metadata alone."""
    from safetensors import safe_open
    from accelc.passes.training import save_tensors
    with safe_open(str(resume), "pt") as f:
        meta = f.metadata()
        weights = {k: f.get_tensor(k) for k in f.keys() if k.startswith("p")}
    out_dir.mkdir(parents=True, exist_ok=True)
    whole = out_dir / resume.name
    save_tensors(whole, weights, meta)
    return cut(whole, out_dir, part_mb, remove=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--specs", nargs="+", required=True, help="eagle specs, as after --drafter")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--out", required=True)
    ap.add_argument("--keep-weights", help="folder for the finished trainings' weights, in parts")
    ap.add_argument("--part-mb", type=float, default=15.0)
    args = ap.parse_args()
    import torch
    from accelc.models.sources import load_model
    from accelc.passes.drafting.eagle import EagleDrafterPass, parse_eagle
    from accelc.passes.drafting.eagle_train import cache_root
    torch.manual_seed(0)
    result = {**provenance(), "model": args.model, "threads": torch.get_num_threads(), "rows": []}
    bundle = load_model(args.model)
    for spec in args.specs:
        t0 = time.perf_counter()
        res = EagleDrafterPass(parse_eagle(spec.partition(":")[2]))(bundle)
        rec = bundle.records.pop("drafter")
        bundle.records.pop("drafter_module")
        row = {"spec": spec, "seconds": round(time.perf_counter() - t0, 1), "metrics": res.metrics,
               **{k: rec[k] for k in ("train", "acceptance_held_out", "vocab_size", "vocab_coverage",
                                      "trainable_parameters")}}
        row["state"] = rec["train"]["state"]          # the resume file under $ACCELC_CACHE/eagle/
        if args.keep_weights:
            row["weight_parts"] = keep_weights(cache_root() / row["state"], Path(args.keep_weights), args.part_mb)
        add_row(result, row, args.out)


if __name__ == "__main__":
    main()
