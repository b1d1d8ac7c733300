"""`accelc chat DIR`: an interactive conversation with a compiled artifact (chat template, history, streaming,
the KV cache reused across turns). /exit, /quit or Ctrl-D leaves; /reset forgets the history; Ctrl-C stops
the reply being written (and, at the prompt, leaves)."""
from __future__ import annotations

import sys

HELP = "type a message; /reset forgets the conversation, /exit (or Ctrl-D) leaves"


def add_parser(sub):
    from .cli_run import add_generation_args
    p = sub.add_parser("chat", help="talk with a compiled artifact interactively",
                       description="An interactive chat: the tokenizer's chat template, the conversation history, "
                                   "streamed replies, the KV cache kept between turns. " + HELP + ".")
    p.add_argument("artifact", help="artifact directory (from accelc compile)")
    p.add_argument("--system", help="a system message that opens the conversation")
    p.add_argument("--max-new-tokens", type=int, default=256, help="tokens per reply at most (default 256)")
    add_generation_args(p)
    p.set_defaults(func=run)


def _read(prompt: str) -> str | None:
    sys.stderr.write(prompt)
    sys.stderr.flush()
    line = sys.stdin.readline()
    return None if line == "" else line.rstrip("\n")


def run(args) -> int:
    from ..runtime.artifact import open_artifact
    from ..runtime.chat import ChatSession
    from .cli_run import checked_generation_args
    from .errors import InputError

    sampling = checked_generation_args(args)
    art = open_artifact(args.artifact, backend=args.backend, device=args.device, threads=args.threads,
                        precision=args.precision)
    chat = ChatSession(art, args.max_new_tokens, sampling, system=args.system, context=art.context)
    print(f"accelc chat: {HELP}", file=sys.stderr, flush=True)

    def show(piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    while True:
        try:
            line = _read("> ")
        except KeyboardInterrupt:
            print(file=sys.stderr)
            return 0
        if line is None or line.strip() in ("/exit", "/quit"):
            print(file=sys.stderr)
            return 0
        if not line.strip():
            continue
        if line.strip() == "/reset":
            chat.reset()
            print("(conversation cleared)", file=sys.stderr, flush=True)
            continue
        try:
            result = chat.say(line, on_text=show)
        except KeyboardInterrupt:
            chat.held = []                   # the cache may be part-written: the next turn prefills anew
            print("\n(stopped)", file=sys.stderr, flush=True)
            continue
        except InputError as e:              # a message past the context: say so and keep the session
            print(f"accelc: {e}", file=sys.stderr, flush=True)
            continue
        sys.stdout.write("\n")
        sys.stdout.flush()
        print(f"[{len(result.tokens)} tokens, {result.reused_tokens} of {result.prompt_tokens} prompt tokens from "
              f"the cache, TTFT {result.ttft_s * 1000:.0f} ms, {result.decode_tok_s:.1f} tok/s]", file=sys.stderr,
              flush=True)
