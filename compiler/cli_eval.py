"""`accelc eval MODEL_OR_ARTIFACT`: perplexity with the fixed protocol plus a greedy sample."""
from __future__ import annotations

import json

from .progress import bar, status
from .protocol import TEXTS, Protocol


def add_parser(sub):
    p = sub.add_parser("eval", help="perplexity on the evaluation split and a short greedy sample",
                       description="Score a model or an artifact with the project's fixed protocol "
                                   "(docs/evaluation.md).")
    p.add_argument("model", nargs="?", default="smollm2-135m",
                   help="packaged model name, transformers folder, .gguf file or artifact dir (default: smollm2-135m)")
    p.add_argument("--text", choices=TEXTS, default=Protocol.text,
                   help="the named evaluation text: brown-eval (default; the calibration domain) or sotu "
                        "(State of the Union addresses 1990-2021, off the calibration domain)")
    p.add_argument("--eval-text", metavar="FILE", help="score this UTF-8 text file instead of a named text")
    p.add_argument("--max-tokens", type=int, default=Protocol.max_tokens, help="tokens scored (default 32768)")
    p.add_argument("--window", type=int, default=Protocol.window, help="window length (default 512)")
    p.add_argument("--backend", choices=["native", "openvino", "onnxruntime", "torch"], help="for artifacts: the backend")
    p.add_argument("--device", help="for artifacts: the device (cpu, npu, cuda)")
    p.add_argument("--context", type=int, metavar="N", help="long-context perplexity: windows of N tokens fed chunk "
                   "by chunk through the artifact's KV cache (full or --kv-cache fixed; docs/runtime/kv-cache.md)")
    p.add_argument("--passkey", type=int, default=0, metavar="TRIALS",
                   help="with --context: also the passkey-retrieval accuracy over TRIALS prompts of about N tokens")
    p.add_argument("--no-sample", action="store_true", help="skip the greedy sample")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


class LazyBar:
    """A progress callback (i, n) that opens its bar on the first call."""

    def __init__(self, desc: str):
        self.desc, self.pb = desc, None

    def __call__(self, i: int, n: int) -> None:
        if self.pb is None:
            self.pb = bar(n, self.desc)
        self.pb.update(i - self.pb.n)

    def close(self) -> None:
        if self.pb is not None:
            self.pb.close()


def run(args) -> int:
    from .errors import InputError
    from ..models.sources import load_model, resolve
    try:
        protocol = Protocol(text=args.text, window=args.window, max_tokens=args.max_tokens)
    except ValueError as e:
        raise InputError(str(e)) from None
    kind, path = resolve(args.model)
    if args.passkey and not args.context:
        raise InputError("--passkey needs --context N")
    if args.context is not None:
        return run_context(args, kind, path)
    progress = LazyBar("perplexity")
    try:
        if kind == "artifact":
            from .harness.evaluate_artifact import evaluate_artifact
            result = evaluate_artifact(path, protocol, args.eval_text, progress, backend=args.backend,
                                       device=args.device, sample=not args.no_sample)
        else:
            status(f"loading {args.model} ...")
            bundle = load_model(args.model)
            from .evaluate import evaluate_torch
            result = evaluate_torch(bundle, protocol, args.eval_text, progress, sample=not args.no_sample)
    finally:
        progress.close()
    result["model"] = args.model
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(f"model       {args.model} ({result['engine']})")
        print(f"perplexity  {result['perplexity']:.3f}  ({result['tokens']} tokens, {result['windows']} windows of "
              f"{protocol.window}, {result['seconds']}s)")
        if "sample" in result:
            print(f"sample      {result['sample']['prompt']!r} -> {result['sample']['greedy']!r}")
    return 0


def run_context(args, kind: str, path) -> int:
    from .errors import InputError
    from .harness.context_eval import evaluate_context
    if args.context < 2:
        raise InputError(f"--context must be >= 2, got {args.context}")
    if args.passkey < 0:
        raise InputError(f"--passkey must be >= 0, got {args.passkey}")
    progress = LazyBar(f"perplexity @{args.context}")
    try:
        if kind == "artifact":
            result = evaluate_context(path, args.context, args.text, max(args.max_tokens, args.context),
                                      args.eval_text, args.passkey, progress, args.backend, args.device)
        else:
            from ..models.sources import load_model
            status(f"loading {args.model} ...")
            result = evaluate_context(load_model(args.model), args.context, args.text,
                                      max(args.max_tokens, args.context), args.eval_text, args.passkey, progress)
    finally:
        progress.close()
    result["model"] = args.model
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(f"model       {args.model} ({result['engine']}, cache {result['cache']})")
        print(f"perplexity  {result['perplexity']:.3f}  (context {args.context}, {result['windows']} windows, chunks of "
              f"{result['chunk']}, {result['tokens']} tokens scored, {result['seconds']}s)")
        if "passkey" in result:
            pk = result["passkey"]
            print(f"passkey     {pk['correct']}/{pk['trials']} ({pk['accuracy']:.0%})")
    return 0
