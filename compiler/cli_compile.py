"""`accelc compile MODEL --target T -o DIR`: run the target's pipeline and write an artifact."""
from __future__ import annotations

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
    p.add_argument("--drafter", metavar="eagle|fused|PATH", help="train an EAGLE drafter (one layer on the target's "
                   "hidden states; eagle:seconds=1800,vocab=8192,...), build a fused self-speculative drafter, or "
                   "package a draft model from PATH (docs/passes/drafter.md)")
    p.add_argument("--calib", metavar="FILE", help="calibration text file (default: Brown calibration split)")
    p.add_argument("--cache-len", type=int, default=1024, help="static KV-cache length for --target npu (default 1024)")
    p.add_argument("--prefill-chunk", type=int, default=64, help="static prefill chunk for --target npu (default 64)")
    p.add_argument("--kv-cache", default="full", metavar="SPEC",
                   help="KV cache: full (default, grows with the text), or a fixed size of M slots: window:M, "
                        "sink:M[,sinks=4] (StreamingLLM), h2o:M, lococo:M[,steps=N] (learned compression; trains "
                        "its compressors, docs/runtime/kv-cache.md)")
    p.add_argument("--convert", metavar="encdec[:OPTIONS]",
                   help="convert to an encoder-decoder: encdec[:decoder_layers=N,steps=S,seconds=T,...] (a "
                        "bidirectional encoder and a decoder of all or N layers, adapted by PrefixLM distillation; "
                        "docs/passes/encdec.md)")
    p.add_argument("--no-validate", action="store_true", help="skip comparing the exported graphs with torch")
    p.add_argument("--formats", metavar="LIST", help="what to ship, comma-separated: openvino, onnx, genai (the "
                   "optimum-style openvino/ folder; needs openvino), native (weights for the native CPU backend) "
                   "(default: the target's: cpu openvino,onnx,genai,native; "
                   "npu and cuda openvino,onnx); validation checks each graph format written")
    p.set_defaults(func=run)


def run(args) -> int:
    from .api import compile as compile_model
    from .progress import PassProgress
    out = compile_model(args.model, args.target, args.output, weights=args.weights, prune=args.prune,
                        quantize=args.quantize, drafter=args.drafter, formats=args.formats, calib=args.calib,
                        cache_len=args.cache_len, prefill_chunk=args.prefill_chunk, validate=not args.no_validate,
                        kv_cache=args.kv_cache, convert=args.convert,
                        force=args.force, on_event=PassProgress(), status=status)
    status(f"wrote {out}")
    return 0
