"""Run the encoder-decoder conversion pass alone (no export) for several --convert specs and record what it
measures: held-out prefix-conditioned perplexity (P = 256, 16 windows of the evaluation split) of the source, of
the converted model before adaptation and after, and the adaptation's steps, time and loss (issue 18: the choice of
decoder layers, the training mode).

    .venv/bin/python scripts/encdec_adapt.py --specs "encdec:decoder_layers=10,pick=spread,seconds=600" \
        "encdec:decoder_layers=10,pick=last,seconds=600" --out docs/passes/results/encdec_adapt_DATE.json

Each spec runs on a freshly loaded source model. Adapted weights are cached (ACCELC_CACHE/encdec/) by source and
options, so `accelc compile --convert SPEC` with the same options reuses them. Raw JSON with machine, date, commit
and command line.
"""
from __future__ import annotations

import argparse
import time

from provenance import add_row, provenance


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--specs", nargs="+", required=True)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    import torch
    from accelc.models.sources import load_model
    from accelc.passes.encdec.convert import ConvertEncDecPass
    from accelc.passes.encdec.options import parse_convert
    torch.manual_seed(0)
    result = {**provenance(), "model": args.model, "threads": torch.get_num_threads(), "rows": []}
    for spec in args.specs:
        bundle = load_model(args.model)
        t0 = time.perf_counter()
        res = ConvertEncDecPass(parse_convert(spec))(bundle)
        rec = bundle.records["encdec"]
        add_row(result, {"spec": spec, "seconds": round(time.perf_counter() - t0, 1), "metrics": res.metrics,
                         **{k: rec.get(k) for k in ("decoder_from", "search", "encoder_layers", "decoder_layers", "encoder",
                                                    "adaptation", "held_out", "gates")}}, args.out)


if __name__ == "__main__":
    main()
