"""Backend and device selection: the devices the artifact's target recorded (manifest["target"]["devices"],
e.g. npu then cpu for an npu artifact), else NPU, then CUDA, then CPU, unless the user says otherwise.

Each candidate (device, backend) is checked for availability and for fitting the artifact (an NPU
needs static graphs in OpenVINO IR; CUDA needs ONNX Runtime's CUDA provider). The torch backend (the
reference, which reloads the source model from outside the artifact) runs only when asked by name.
The choice comes with a one-line reason.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..compiler.errors import InputError

DEVICE_ORDER = ("npu", "cuda", "cpu")
# backends to try on each device, in order of preference
# torch is never chosen automatically: it runs the *source* model the manifest names, outside the artifact,
# so only an explicit --backend torch (the user pointing at it) may read that
DEVICE_BACKENDS = {"npu": ("openvino",), "cuda": ("onnxruntime",), "cpu": ("openvino", "onnxruntime")}
ALL_BACKENDS = ("native", "openvino", "onnxruntime", "torch")


@dataclass(frozen=True)
class Choice:
    backend: str
    device: str
    reason: str


def _ov_devices() -> list[str]:
    try:
        from .backends.openvino import available_devices
        return available_devices()
    except Exception:
        return []


def _ort_providers() -> list[str]:
    try:
        from .backends.onnxruntime import available_providers
        return available_providers()
    except Exception:
        return []


def _torch_cuda() -> bool:
    try:
        import torch
        return bool(torch.cuda.is_available())
    except Exception:
        return False


def why_not(backend: str, device: str, manifest: dict, graph: dict) -> str | None:
    """None if `backend` can run `graph` on `device` here, else the reason it cannot."""
    if device == "npu":
        if backend != "openvino":
            return f"{backend} does not run on an NPU"
        if not graph.get("static"):
            return "the NPU needs static graphs (compile with --target npu)"
        return None if "NPU" in _ov_devices() else "OpenVINO sees no NPU"
    if backend == "openvino":
        if device != "cpu":
            return f"the openvino backend here runs on cpu or npu, not {device}"
        return None if graph.get("openvino") else "the artifact has no OpenVINO IR"
    if backend == "onnxruntime":
        if not graph.get("onnx"):
            return "the artifact has no ONNX graph"
        if device == "cuda" and "CUDAExecutionProvider" not in _ort_providers():
            return "ONNX Runtime has no CUDAExecutionProvider"
        return None if device in ("cpu", "cuda") else f"onnxruntime does not run on {device}"
    if backend == "native":
        if device != "cpu":
            return f"the native backend runs on cpu, not {device}"
        if graph.get("static"):
            return "the native backend runs dynamic-shape artifacts (--target cpu)"
        from .backends.native import unavailable_reason as native_reason
        return native_reason(manifest)
    if backend == "torch":
        from .backends.torch import unavailable_reason
        if device == "cuda" and not _torch_cuda():
            return "torch sees no CUDA device"
        if device not in ("cpu", "cuda"):
            return f"torch does not run on {device}"
        return unavailable_reason(manifest)
    return f"unknown backend {backend}"


def native_leads(formats: set, precision: str | None, features: list[str]) -> bool:
    """Whether the native backend is the CPU default for linears in these formats on this CPU
    (docs/runtime/native.md "Choosing the backend", from the measured table): codebooks and int3 groups always
    (OpenVINO expands codebooks and u3 weights to float32 at load; int3 compiled since 2026-12-06 is stored i4 and runs
    4-bit there, native runs it at 3); int8/int4/int2 where AVX512-VNNI or AVX2 runs them as integer dot products
    (measured ahead of OpenVINO on both: 2.0-3.0x with VNNI, 1.7-2.4x on an AVX2-only Zen 2); a CPU without AVX2
    is not measured and keeps OpenVINO. fp32 artifacts stay on OpenVINO at f32 by default (exact: greedy
    identical to transformers); the native backend's bf16 policy for them is `--backend native`."""
    if not formats:
        return False
    integer = "+avx512vnni" in features or "+avx2" in features
    ok = {"cb", "q3s"} | ({"q8a", "q4s", "q2s"} if integer else set())
    return formats <= ok


def cpu_order(manifest: dict, features: list[str] | None = None) -> tuple[str, ...]:
    """The CPU backends to try, in order: native first where it leads on this artifact's weights and this CPU."""
    rec = (manifest.get("records") or {}).get("native")
    formats = set(rec.get("linear_formats") or []) if isinstance(rec, dict) else set()
    if formats and features is None:
        try:
            from .native.jit import host_target
            features = host_target().features.split(",")
        except Exception:           # no llvmlite: native is not available anyway
            features = []
    if native_leads(formats, rec.get("precision") if isinstance(rec, dict) else None, features or []):
        return ("native", "openvino", "onnxruntime")
    return ("openvino", "onnxruntime", "native")


def target_devices(manifest: dict) -> list[str]:
    """The device order the artifact's target recorded (known devices only), else DEVICE_ORDER."""
    recorded = ((manifest.get("target") or {}).get("devices")) or []
    known = [d for d in recorded if isinstance(d, str) and d in DEVICE_ORDER] if isinstance(recorded, list) else []
    return known or list(DEVICE_ORDER)


def select(manifest: dict, graph: dict, backend: str | None = None, device: str | None = None) -> Choice:
    if backend is not None and backend not in ALL_BACKENDS:
        raise InputError(f"unknown backend '{backend}' (choose from {', '.join(ALL_BACKENDS)})")
    if device is not None:
        device = device.lower()
        if device not in DEVICE_ORDER:
            raise InputError(f"unknown device '{device}' (choose from {', '.join(DEVICE_ORDER)})")
    devices = [device] if device else target_devices(manifest)
    skipped = []
    for d in devices:
        for b in ([backend] if backend else (cpu_order(manifest) if d == "cpu" else DEVICE_BACKENDS[d])):
            reason = why_not(b, d, manifest, graph)
            if reason is None:
                how = "as asked" if (backend or device) else f"first available of {', '.join(devices)}"
                if b == "native" and not backend:
                    how += "; native leads on this artifact's weight format"
                tail = f"; skipped: {'; '.join(skipped)}" if skipped else ""
                return Choice(b, d, f"{b} on {d} ({how}{tail})")
            skipped.append(f"{b}/{d}: {reason}")
    raise InputError("no usable backend/device: " + "; ".join(skipped))
