"""accelc chat: multi-turn with the KV cache reused (same tokens as a fresh generation of the whole
conversation), and the interactive loop in a pseudo-terminal."""
import os
import pty
import select
import subprocess
import sys
import time

import pytest

from accelc.runtime.artifact import open_artifact
from accelc.runtime.chat import ChatSession
from accelc.runtime.generate import generate


@pytest.mark.parametrize("backend", ["openvino", "onnxruntime"])
def test_second_turn_reuses_the_cache_and_matches_a_fresh_generation(tiny_artifact, backend):
    art = open_artifact(tiny_artifact, backend=backend, report=False)
    chat = ChatSession(art, max_new_tokens=12)
    first = chat.say("hello")
    assert first.reused_tokens == 0 and first.tokens
    second = chat.say("and then?")
    assert second.reused_tokens >= first.prompt_tokens           # turn 1 was not prefilled again (the reply too
    # where its text re-encodes to the same tokens: a random byte model writes invalid UTF-8, so not here)
    ids = chat._render(chat.messages[:-1])
    fresh = generate(art, ids, 12)                                # the whole conversation from an empty cache
    assert fresh.tokens == second.tokens and fresh.prompt_tokens == second.prompt_tokens
    assert [m["role"] for m in chat.messages] == ["user", "assistant", "user", "assistant"]


def test_old_turns_are_dropped_when_the_context_is_full(tiny_artifact):
    art = open_artifact(tiny_artifact, report=False)
    chat = ChatSession(art, max_new_tokens=8, context=120)
    for i in range(6):
        chat.say(f"message number {i} " * 2)
    ids = chat._render(chat.messages[:-1])
    assert len(ids) + 8 <= 120 and chat.messages[0]["content"] != "message number 0 " * 2


def read_until(fd, needle: bytes, timeout: float = 120) -> bytes:
    buf, end = b"", time.time() + timeout
    while needle not in buf:
        left = end - time.time()
        if left <= 0:
            raise AssertionError(f"no {needle!r} in {buf[-400:]!r}")
        r, _, _ = select.select([fd], [], [], left)
        if r:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            buf += chunk
    return buf


def test_chat_in_a_pseudo_terminal(tiny_artifact):
    main_fd, sub_fd = pty.openpty()
    p = subprocess.Popen([sys.executable, "-m", "accelc.compiler.cli", "chat", str(tiny_artifact),
                          "--max-new-tokens", "6"], stdin=sub_fd, stdout=sub_fd, stderr=sub_fd, close_fds=True)
    os.close(sub_fd)
    try:
        read_until(main_fd, b"> ")
        os.write(main_fd, b"hi there\n")
        out = read_until(main_fd, b"from the cache")
        assert b"0 of" in out
        os.write(main_fd, b"again\n")
        out = read_until(main_fd, b"from the cache")
        reused = int(out.rsplit(b" tokens, ", 1)[1].split(b" of ")[0])
        assert reused > 0
        os.write(main_fd, b"/exit\n")
        assert p.wait(timeout=60) == 0
    finally:
        if p.poll() is None:
            p.kill()
        os.close(main_fd)
