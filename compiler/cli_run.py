"""`accelc run DIR --prompt P`: generate text with a compiled artifact (streams to stdout)."""
from __future__ import annotations

import json
import sys

MAX_NEW_TOKENS = 1 << 20


def add_parser(sub):
    p = sub.add_parser("run", help="generate text with a compiled artifact",
                       description="Open an artifact (verifying every file), pick a backend and device (NPU, then "
                                   "CUDA, then CPU unless told) and generate. Text streams to stdout; timings go to "
                                   "stderr.")
    p.add_argument("artifact", help="artifact directory (from accelc compile)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="the prompt (the chat template is applied when the tokenizer has one)")
    src.add_argument("--prompt-file", metavar="FILE", help="read the prompt from a UTF-8 text file ('-': stdin)")
    p.add_argument("--max-new-tokens", type=int, default=128, help="tokens to generate at most (default 128)")
    p.add_argument("--truncate", action="store_true", help="a prompt longer than the model's context keeps its "
                   "last tokens (with a warning) instead of being refused")
    p.add_argument("--verify", action="store_true", help="rehash every artifact file, even those unchanged since "
                   "they last verified")
    p.add_argument("--raw", action="store_true", help="do not apply the tokenizer's chat template")
    add_generation_args(p)
    p.add_argument("--stop", action="append", default=[], metavar="S", help="stop before this string (repeatable)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of streaming text")
    # speculative decoding (drafter graphs from --drafter eagle|fused, or prompt lookup; runtime/speculative/artifact.py)
    p.add_argument("--no-speculative", action="store_true", help="decode token by token even when the artifact "
                   "has drafter graphs (speculative decoding is the default then)")
    p.add_argument("--draft-mode", choices=["cost", "specdec", "confidence", "fixed", "heuristic", "lookup",
                                             "combined"],
                   default="cost",
                   help="with drafter graphs: cost (default: each round's draft length, 0 = no speculation, from "
                   "measured draft/verify costs and acceptance), specdec (EAGLE drafters: the cost model decides whether to "
                   "speculate, the drafter's trained acceptance head when to stop drafting; SpecDec++), confidence (stop when the drafter's own "
                   "probabilities fall; the baseline), fixed k, or heuristic grow/shrink; lookup: prompt lookup "
                   "(drafts what followed the text's last n-gram earlier in the prompt or output; any artifact, no "
                   "training); combined: lookup, and the drafter where lookup finds nothing (both under the cost "
                   "model)")
    p.add_argument("--draft-k", type=int, help="draft tokens per round (fixed), start/cap (confidence, heuristic; "
                   "default 4) or cap (cost, specdec, lookup, combined; default 8)")
    p.add_argument("--fuzzy", metavar="DIV:T", help="fuzzy acceptance (not lossless): also accept a model draft when "
                   "the divergence DIV (js or tv) between the drafter's and the target's distributions is below T, "
                   "e.g. js:0.3 (docs/passes/drafter.md)")
    p.set_defaults(func=run)


def add_generation_args(p) -> None:
    """Backend, device, threads and sampling options, shared by `run` and `chat` (checked_generation_args)."""
    p.add_argument("--backend", choices=["native", "openvino", "onnxruntime", "torch"], help="override the backend choice")
    p.add_argument("--device", choices=["npu", "cuda", "cpu"], help="override the device choice")
    p.add_argument("--threads", type=int, help="CPU threads (default: all cores available to this process)")
    p.add_argument("--precision", choices=["auto", "f32"], default="auto",
                   help="native backend arithmetic: auto (bf16 weights for fp32 artifacts on bf16 CPUs, int8 "
                   "activations for int8/int4 weights on VNNI CPUs; docs/runtime/native.md) or f32 (exact)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-k", type=int, default=0, help="sample from the k most likely tokens (0 = off)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1 = off)")
    p.add_argument("--seed", type=int, help="random seed for sampling")


def checked_generation_args(args):
    """--threads, --max-new-tokens and the sampling options of `run` and `chat`, checked; -> SamplingConfig."""
    from ..runtime.sampling import SamplingConfig
    from .errors import InputError
    if args.threads is not None and args.threads < 1:
        raise InputError(f"--threads must be >= 1, got {args.threads}")
    if not 1 <= args.max_new_tokens <= MAX_NEW_TOKENS:
        raise InputError(f"--max-new-tokens must be between 1 and {MAX_NEW_TOKENS}, got {args.max_new_tokens}")
    return SamplingConfig(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed)


def run(args) -> int:
    from ..runtime.artifact import open_artifact, read_artifact
    from ..runtime.generate import encode_prompt, fit_context, generate
    from .prompt_input import read_prompt

    sampling = checked_generation_args(args)
    from ..runtime.speculative.artifact import check_fuzzy
    check_fuzzy(args.fuzzy)
    prompt = read_prompt(args.prompt, args.prompt_file)
    files = read_artifact(args.artifact, verify_all=args.verify)   # manifest + tokenizer; no graphs yet
    ids = fit_context(encode_prompt(files.tokenizer, prompt, raw=args.raw), args.max_new_tokens, files.context,
                      truncate=args.truncate, what=files.context_name)
    from ..runtime.speculative.artifact import wants_full_logits
    art = open_artifact(files, backend=args.backend, device=args.device, threads=args.threads,
                        precision=args.precision,
                        full_logits=wants_full_logits(args.draft_mode, not args.no_speculative))

    def show(piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    spec = None
    if not args.no_speculative:
        from ..runtime.speculative.artifact import run_speculative
        spec = run_speculative(art, ids, args.max_new_tokens, sampling, k=args.draft_k, draft_mode=args.draft_mode,
                               fuzzy=args.fuzzy,
                               stop=args.stop, warn=lambda m: print(f"accelc: {m}", file=sys.stderr))
    if spec is not None:
        result, stats = spec
        if not args.json:
            show(result.text)
    else:
        result = generate(art, ids, args.max_new_tokens, sampling, stop=args.stop,
                          on_text=None if args.json else show)
    if args.json:
        out = {"backend": art.choice.backend, "device": art.choice.device, "engine": art.engine,
               "threads": art.threads, "prompt": prompt, **result.to_json()}
        if spec is not None:
            out["speculative"] = stats.to_json()
        print(json.dumps(out, indent=1))
    else:
        sys.stdout.write("\n")
        print(f"[{len(result.tokens)} tokens, stop: {result.stop_reason}, {art.choice.backend}/{art.choice.device}, "
              f"TTFT {result.ttft_s * 1000:.0f} ms ({result.prompt_tokens} prompt tokens), "
              f"decode {result.decode_tok_s:.1f} tok/s]", file=sys.stderr)
    return 0
