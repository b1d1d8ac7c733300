"""The `accelc` command line. Each command lives in its own module with add_parser(sub) and run(args)."""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
import threading

from .errors import AccelcError

# command name -> module (relative to accelc.compiler) defining add_parser(subparsers) and run(args)
COMMANDS = {
    "list-models": "cli_models",
    "fetch": "cli_models",
    "eval": "cli_eval",
    "compile": "cli_compile",
    "run": "cli_run",
    "chat": "cli_chat",
    "inspect": "cli_inspect",
    "bench": "cli_bench",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="accelc", description="Compile small language models for edge "
                                     "devices (CPU, NPU, CUDA) and run them.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details (and tracebacks) to stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    seen = set()
    for name, mod in COMMANDS.items():
        if mod in seen:
            continue
        try:
            module = importlib.import_module(f".{mod}", __package__)
        except ModuleNotFoundError as e:
            if e.name and e.name.endswith(mod):
                continue  # command not built yet
            raise
        seen.add(mod)
        module.add_parser(sub)
    return parser


class Terminated(BaseException):
    """SIGTERM or SIGHUP, raised in the main thread so that `finally` and staging cleanup run as for Ctrl-C."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _raise_terminated(signum, frame):
    raise Terminated(signum)


def _handle_termination() -> None:
    """SIGTERM (timeout, CI, kill) and SIGHUP (closed terminal) clean up like SIGINT: staging dirs go."""
    if threading.current_thread() is not threading.main_thread():
        return
    for name in ("SIGTERM", "SIGHUP"):
        sig = getattr(signal, name, None)
        if sig is not None and signal.getsignal(sig) in (signal.SIG_DFL, None):
            signal.signal(sig, _raise_terminated)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _handle_termination()
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        _quiet_libraries()
    try:
        return int(args.func(args) or 0)
    except AccelcError as e:
        print(f"accelc: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("accelc: interrupted", file=sys.stderr)
        return 130
    except Terminated as t:
        print(f"accelc: stopped by {signal.Signals(t.signum).name}", file=sys.stderr)
        return 128 + t.signum
    except Exception as e:  # a bug: one line unless -v
        if args.verbose:
            raise
        print(f"accelc: internal error: {type(e).__name__}: {e} (run with -v for the traceback)", file=sys.stderr)
        return 1


def _quiet_libraries() -> None:
    """transformers' warnings and loading bars off, through the environment: importing transformers here would
    cost `accelc run` seconds that it never needs (its runtime does not import transformers)."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ["ACCELC_QUIET"] = "1"                   # models/sources.py applies it when it imports transformers
    if "transformers" in sys.modules:
        try:
            import transformers
            transformers.utils.logging.set_verbosity_error()
            transformers.utils.logging.disable_progress_bar()
        except Exception:
            pass
    import warnings
    warnings.filterwarnings("ignore")


if __name__ == "__main__":
    sys.exit(main())
