"""torch backend: the reference (and the CUDA fallback when ONNX Runtime has no CUDA provider).

An artifact holds ONNX/OpenVINO graphs, not torch weights. This backend therefore rebuilds the
exported module (passes/export/decoder_graph.py DecoderGraph) from the artifact's *source* model, and it is
only offered when the artifact's weights are the source's weights unchanged: fp32, no pruning, no
quantization, no encoder-decoder conversion, no norms tuned with a lococo cache. The source's sha256 is
checked against the manifest. Otherwise it fails with a clear error.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ...compiler.errors import ArtifactError


def unavailable_reason(manifest: dict) -> str | None:
    """Why the torch backend cannot serve this artifact, or None if it can."""
    opts = manifest.get("options", {})
    changed = [k for k in ("prune", "quantize", "convert") if opts.get(k)]
    if ((manifest.get("records") or {}).get("kv_cache") or {}).get("training", {}).get("norm_weights"):
        changed.append("norm weights trained with the lococo cache")
    if opts.get("weights", "fp32") != "fp32":
        changed.append(f"weights={opts.get('weights')}")
    if changed:
        return (f"the torch backend runs the source model and this artifact's weights differ from it "
                f"({', '.join(changed)}); use --backend openvino or onnxruntime")
    if not manifest.get("source"):
        return "the manifest records no source model for the torch backend"
    return None


def load_source(manifest: dict):
    """The artifact's source model as a ModelBundle, checked against the manifest's sha256."""
    from ...models.sources import load_model
    src = manifest["source"]
    spec = src["name"] if src.get("format") == "packaged-gguf" else src.get("path", "")
    try:
        bundle = load_model(spec)
    except Exception as e:
        raise ArtifactError(f"the torch backend could not load the source model {spec!r}: {e}") from None
    if bundle.source.get("sha256") != src.get("sha256"):
        raise ArtifactError(f"the source model {spec!r} has changed since the artifact was compiled (sha256 differs)")
    return bundle


class TorchBackend:
    name = "torch"

    def __init__(self, manifest: dict, device: str, threads: int, scores: bool = False):
        import torch
        from ...passes.export.decoder_graph import DecoderGraph
        why = unavailable_reason(manifest)
        if why:
            raise ArtifactError(why)
        if device == "cuda" and not torch.cuda.is_available():
            raise ArtifactError("torch has no CUDA device")
        if device not in ("cpu", "cuda"):
            raise ArtifactError(f"the torch backend runs on cpu or cuda, not {device}")
        if device == "cpu":
            torch.set_num_threads(int(threads))
        bundle = load_source(manifest)
        self.torch = torch
        self.device = device
        self.module = DecoderGraph(bundle.model, bundle.adapter, scores=scores).eval().to(device)
        self.layers = self.module.last - self.module.first

    def forward(self, input_ids, position_ids, attention_mask, cache):
        torch, dev = self.torch, self.device
        args = [torch.from_numpy(np.ascontiguousarray(a)).to(dev) for a in (input_ids, position_ids, attention_mask,
                                                                            *cache)]
        with torch.inference_mode():
            outs = self.module(*args)
        outs = [o.float().cpu().numpy() for o in outs]
        return outs[0], outs[1:]


def load(artifact_dir: Path, graph: dict, device: str, threads: int, manifest: dict,
         full_logits: bool = True) -> TorchBackend:
    return TorchBackend(manifest, device, threads, scores=graph.get("cache") == "fixed")
