"""`accelc compile MODEL --target T -o DIR`: run the target's pipeline and write an artifact."""
from __future__ import annotations

from pathlib import Path

from .progress import status


def add_parser(sub):
    p = sub.add_parser("compile", help="compile a model into a deployable artifact",
                       description="Run the target's pass pipeline (compression, drafter, export, validation) and "
                                   "write an artifact directory atomically.")
    p.add_argument("model", nargs="?", default="smollm2-135m",
                   help="packaged model name, transformers folder or .gguf file (default: smollm2-135m)")
    p.add_argument("--target", default="cpu", help="cpu, npu or cuda (default: cpu)")
    p.add_argument("-o", "--output", required=True, help="artifact directory to create")
    p.add_argument("--force", action="store_true", help="replace the output directory if it exists")
    p.add_argument("--weights", default="fp32", help="graph weight precision: fp32, fp16, int8, int4 (default fp32)")
    p.add_argument("--prune", metavar="METHOD:ARGS", help="pruning, e.g. cfsp:0.3 or dsnot:0.6 (docs/passes/pruning.md)")
    p.add_argument("--quantize", metavar="METHOD:ARGS", help="extreme quantization, e.g. pv:2x8g8 "
                   "(docs/passes/quantization.md)")
    p.add_argument("--drafter", metavar="fused|PATH", help="build a fused self-speculative drafter, or package a "
                   "draft model from PATH")
    p.add_argument("--calib", metavar="FILE", help="calibration text file (default: Brown calibration split)")
    p.add_argument("--cache-len", type=int, default=1024, help="static KV-cache length for --target npu (default 1024)")
    p.add_argument("--prefill-chunk", type=int, default=64, help="static prefill chunk for --target npu (default 64)")
    p.add_argument("--no-validate", action="store_true", help="skip comparing the exported graphs with torch")
    p.add_argument("--formats", metavar="LIST", help="graph formats to ship, comma-separated: openvino, onnx "
                   "(default: the target's, openvino,onnx); validation checks each one written")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..models.sources import load_model, resolve
    from ..targets import CompileOptions, get_target
    from .artifact import check_output_dir, publish, staging, write_manifest
    from .errors import InputError
    from .manager import PassManager
    from .progress import PassProgress

    out = Path(args.output).expanduser().resolve()
    # everything that can be checked before the (slow) model load is checked first
    check_output_dir(out, args.force)
    target = get_target(args.target)
    if args.calib:
        from ..models.corpus import read_text_file
        read_text_file(args.calib)
    options = CompileOptions(weights=args.weights, prune=args.prune, quantize=args.quantize, drafter=args.drafter,
                             calib=args.calib, cache_len=args.cache_len, prefill_chunk=args.prefill_chunk,
                             validate=not args.no_validate, formats=args.formats)
    passes = target.pipeline(options)
    kind, _ = resolve(args.model)
    if kind == "artifact":
        raise InputError(f"{args.model} is already an artifact; compile takes a model source")

    if args.drafter and args.drafter.partition(":")[0] != "fused":
        dkind, _ = resolve(args.drafter)          # a draft model path: checked before the slow load
        if dkind == "artifact":
            raise InputError(f"--drafter {args.drafter} is an accelc artifact; give the draft model's source")

    with staging(out) as stage:                   # created first: an unwritable parent fails before the load
        status(f"loading {args.model} ...")
        bundle = load_model(args.model)
        status(f"target {target.name}: " + " -> ".join(p.name for p in passes))
        bundle.workdir = stage
        log = PassManager(passes, on_event=PassProgress()).run(bundle)
        tok_dir = stage / "tokenizer"
        bundle.tokenizer.save_pretrained(tok_dir)
        manifest = {
            "source": bundle.source,
            "target": {"name": target.name, "static_shapes": target.static_shapes, "devices": list(target.devices)},
            "options": {k: v for k, v in vars(options).items() if k != "extra"},
            "model": bundle.adapter.describe(),
            "graphs": bundle.records.get("graphs", {}),
            "records": {k: v for k, v in bundle.records.items() if k not in ("pass_log", "graphs")
                        and _is_json(v)},
            "passes": [r.to_json() for r in log],
        }
        write_manifest(stage, manifest)
        publish(stage, out, args.force)
    status(f"wrote {out}")
    return 0


def _is_json(v) -> bool:
    import json
    try:
        json.dumps(v)
        return True
    except TypeError:
        return False
