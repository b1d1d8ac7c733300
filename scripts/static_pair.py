"""Shared by the static-vs-dynamic checks (check_kv_static.py, check_encdec_static.py): open a dynamic (cpu) and a
static (npu) artifact of the same model on OpenVINO's CPU plugin, refusing them in the wrong order."""
from __future__ import annotations


def open_pair(dynamic: str, static: str) -> dict:
    from accelc.runtime.artifact import open_artifact
    arts = {k: open_artifact(p, backend="openvino", device="cpu", report=False)
            for k, p in (("dynamic", dynamic), ("static", static))}
    if not arts["static"].static or arts["dynamic"].static:
        raise SystemExit("give a dynamic (cpu) artifact, then a static (npu) one")
    return arts
