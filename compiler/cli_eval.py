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
    p.add_argument("--prefix", type=int, metavar="P", help="prefix-conditioned perplexity: the 128 tokens after "
                   "each prefix of P tokens (an encoder-decoder encodes the prefix; docs/evaluation.md)")
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
    from ..models.sources import resolve
    if args.passkey and not args.context:
        raise InputError("--passkey needs --context N")
    if args.prefix is not None and args.context is not None:
        raise InputError("--prefix and --context are two evaluations: give one")
    if args.prefix is not None:
        return run_prefix(args, *resolve(args.model))
    if args.context is not None:       # its own windows (N tokens): --window does not apply
        return run_context(args, *resolve(args.model))
    try:
        protocol = Protocol(text=args.text, window=args.window, max_tokens=args.max_tokens)
    except ValueError as e:
        raise InputError(str(e)) from None
    kind, path = resolve(args.model)

    def on_artifact(progress):
        from .harness.evaluate_artifact import evaluate_artifact
        return evaluate_artifact(path, protocol, args.eval_text, progress, backend=args.backend, device=args.device,
                                 sample=not args.no_sample)

    def on_bundle(bundle, progress):
        from .evaluate import evaluate_torch
        return evaluate_torch(bundle, protocol, args.eval_text, progress, sample=not args.no_sample)
    result = measure(args, kind, "perplexity", on_artifact, on_bundle)
    lines = [f"model       {args.model} ({result['engine']})",
             f"perplexity  {result['perplexity']:.3f}  ({result['tokens']} tokens, {result['windows']} windows of "
             f"{protocol.window}, {result['seconds']}s)"]
    if "sample" in result:
        lines.append(f"sample      {result['sample']['prompt']!r} -> {result['sample']['greedy']!r}")
    return emit(args, result, lines)


def measure(args, kind: str, desc: str, on_artifact, on_bundle) -> dict:
    """on_artifact(progress) or, for a model source, on_bundle(loaded bundle, progress), under one progress bar."""
    from ..models.sources import load_model
    progress = LazyBar(desc)
    try:
        if kind == "artifact":
            result = on_artifact(progress)
        else:
            status(f"loading {args.model} ...")
            result = on_bundle(load_model(args.model), progress)
    finally:
        progress.close()
    result["model"] = args.model
    return result


def emit(args, result: dict, lines: list[str]) -> int:
    print(json.dumps(result, indent=1) if args.json else "\n".join(lines))
    return 0


def run_context(args, kind: str, path) -> int:
    from .errors import InputError
    from .harness.context_eval import evaluate_context
    if args.context < 2:
        raise InputError(f"--context must be >= 2, got {args.context}")
    if args.passkey < 0:
        raise InputError(f"--passkey must be >= 0, got {args.passkey}")
    tokens = max(args.max_tokens, args.context)
    result = measure(args, kind, f"perplexity @{args.context}",
                     lambda progress: evaluate_context(path, args.context, args.text, tokens, args.eval_text,
                                                       args.passkey, progress, args.backend, args.device),
                     lambda bundle, progress: evaluate_context(bundle, args.context, args.text, tokens,
                                                               args.eval_text, args.passkey, progress))
    lines = [f"model       {args.model} ({result['engine']}, cache {result['cache']})",
             f"perplexity  {result['perplexity']:.3f}  (context {args.context}, {result['windows']} windows, chunks "
             f"of {result['chunk']}, {result['tokens']} tokens scored, {result['seconds']}s)"]
    if "passkey" in result:
        pk = result["passkey"]
        lines.append(f"passkey     {pk['correct']}/{pk['trials']} ({pk['accuracy']:.0%})")
    return emit(args, result, lines)


def run_prefix(args, kind: str, path) -> int:
    from .errors import InputError
    from .harness.prefix_eval import evaluate_prefix
    if args.prefix < 1:
        raise InputError(f"--prefix must be >= 1, got {args.prefix}")
    result = measure(args, kind, f"perplexity after {args.prefix}",
                     lambda progress: evaluate_prefix(path, args.prefix, args.text, args.max_tokens, args.eval_text,
                                                      progress, args.backend, args.device),
                     lambda bundle, progress: evaluate_prefix(bundle, args.prefix, args.text, args.max_tokens,
                                                              args.eval_text, progress))
    lines = [f"model       {args.model} ({result['engine']}, {result['model_kind']})",
             f"perplexity  {result['perplexity']:.3f}  (the {result['continuation']} tokens after a prefix of "
             f"{args.prefix}, {result['windows']} windows, {result['tokens']} tokens scored, {result['seconds']}s)"]
    return emit(args, result, lines)
