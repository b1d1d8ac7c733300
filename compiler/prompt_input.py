"""Prompts from the command line, a file or stdin: valid UTF-8, not empty, one clear line otherwise."""
from __future__ import annotations

import sys
from pathlib import Path

from .errors import InputError

MAX_PROMPT_BYTES = 64 << 20


def _decode(data: bytes, where: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{where} is not valid UTF-8 (byte {e.start}: {data[e.start:e.start + 1]!r})") from None


def read_prompt(prompt: str | None, prompt_file: str | None) -> str:
    """The prompt text: --prompt (argv bytes that are not UTF-8 arrive as surrogates: refused), or
    --prompt-file FILE ('-' reads stdin)."""
    if prompt_file is not None:
        if prompt_file == "-":
            if sys.stdin is None:
                raise InputError("--prompt-file -: there is no standard input")
            data = sys.stdin.buffer.read(MAX_PROMPT_BYTES + 1)
            where = "the prompt on standard input"
        else:
            p = Path(prompt_file).expanduser()
            if not p.is_file():
                raise InputError(f"--prompt-file: no such file: {prompt_file}")
            if p.stat().st_size > MAX_PROMPT_BYTES:
                raise InputError(f"--prompt-file {prompt_file} is larger than {MAX_PROMPT_BYTES >> 20} MB")
            data = p.read_bytes()
            where = f"--prompt-file {prompt_file}"
        if len(data) > MAX_PROMPT_BYTES:
            raise InputError(f"{where} is larger than {MAX_PROMPT_BYTES >> 20} MB")
        text = _decode(data, where)
    else:
        text = prompt or ""
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise InputError("--prompt is not valid UTF-8 (check the terminal's or the script's encoding)") from None
        where = "--prompt"
    if not text.strip():
        raise InputError(f"{where} is empty")
    return text
