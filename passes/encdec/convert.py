"""The conversion pass `convert-encdec` (`--convert encdec[:decoder_layers=N,steps=S,...]`, docs/passes/encdec.md).

It turns the bundle's model into an encoder-decoder (model.py), adapts it (train.py; steps=0 skips that), and scores
the source and the converted model on held-out windows of the evaluation split before and after (prefix.py,
P = 256). Afterwards bundle.model is the decoder (a transformers causal LM of N layers whose cache starts with the
encoder's memory: export-onnx writes it as any decoder graph) and bundle.records["encdec_module"] holds the EncDec
(export-encoder writes its encoder graph; validation runs both against it).
"""
from __future__ import annotations

import copy
import dataclasses
import logging

import torch

from ...compiler.errors import PreconditionError
from ...compiler.pass_base import Pass, PassResult
from ...models.adapter import ArchAdapter
from ..export.decoder_graph import DecoderGraph
from .model import EncDec, convert
from .options import EncDecConfig, parse_convert

log = logging.getLogger(__name__)
EVAL_PREFIX = 256


class ConvertEncDecPass(Pass):
    name = "convert-encdec"
    config_class = EncDecConfig

    def requires(self, bundle) -> None:
        if "encdec_module" in bundle.records:
            raise PreconditionError("the model is already an encoder-decoder")
        if "drafter_module" in bundle.records:
            raise PreconditionError("convert the model before building a drafter")

    def call(self, bundle) -> PassResult:
        from ...models.corpus import load_text, token_stream
        from ..training import fingerprint, run_key
        from .prefix import decoder_only_logits, encdec_logits, prefix_windows, score
        from .train import adapt, cache_root
        cfg, model = self.config, bundle.model
        source_layers = bundle.adapter.num_layers
        search = cfg.pick == "greedy" and 0 < cfg.decoder_layers < source_layers
        key = fingerprint(model, torch.zeros(0, dtype=torch.long)) if (cfg.steps or search) else None
        teacher = DecoderGraph(copy.deepcopy(model).eval()).eval() if (cfg.steps or cfg.eval_windows or search) \
            else None
        if teacher is not None:
            for p in teacher.parameters():
                p.requires_grad_(False)
        from ..training import use_bf16
        layers = search_trace = None
        if search:
            layers, search_trace = _greedy(teacher, bundle.tokenizer, cfg, key, use_bf16(cfg.precision, torch.device("cpu")))
        ed = convert(model, cfg.decoder_layers, cfg.pick, cfg.encoder == "causal",
                     cfg.gate if cfg.encoder == "blend" else None, layers=layers).eval()
        for p in ed.parameters():           # adaptation unfreezes what it trains, and freezes it again
            p.requires_grad_(False)
        scores = {}
        windows, prefix = None, EVAL_PREFIX
        if cfg.eval_windows and bundle.tokenizer is not None:
            stream = token_stream(bundle.tokenizer, load_text("eval"))
            prefix = min(EVAL_PREFIX, max(2, stream.numel() // (2 * cfg.eval_windows) - 128))
            windows = prefix_windows(stream, prefix, cfg.eval_windows)
            scores["source"] = score(decoder_only_logits(teacher), windows, prefix)
            scores["converted"] = score(encdec_logits(ed), windows, prefix)
        train = None
        if cfg.steps:
            calib = token_stream(bundle.tokenizer, load_text("calib", cfg.calib)) if bundle.tokenizer is not None \
                else torch.randint(3, bundle.adapter.vocab_size, (4 * cfg.seq_len,), generator=torch.Generator().manual_seed(0))
            from ..training import train_device
            dev = train_device(cfg.device)
            bf16 = use_bf16(cfg.precision, dev)
            resume = cache_root() / f"adapt-{run_key(key, cfg.training_options())}.safetensors"
            train = {**adapt(ed, teacher, calib, cfg, resume=resume, bf16=bf16, device=dev),
                     "precision": "bf16" if bf16 else "f32"}
            if windows is not None:
                scores["adapted"] = score(encdec_logits(ed), windows, prefix)
        del teacher
        bundle.model = ed.decoder
        bundle.adapter = ArchAdapter(ed.decoder)
        enc = ArchAdapter(ed.encoder)
        record = {"kind": "encdec", "attention": cfg.attention, "encoder": cfg.encoder,
                  "source_layers": source_layers, "encoder_layers": enc.num_layers,
                  "decoder_layers": bundle.adapter.num_layers, "decoder_from": ed.decoder_from, "memory": ed.memory,
                  "pick": cfg.pick, "search": search_trace, "encoder_parameters": _params(ed.encoder, ed.decoder),
                  "decoder_parameters": bundle.adapter.num_parameters(),
                  "adaptation": train and {**train, **{k: getattr(cfg, k) for k in
                                                       ("batch", "splits", "seq_len", "min_prefix", "min_target", "lr", "kd", "train")}},
                  "held_out": scores or None, "gates": _gates(ed)}
        bundle.records["encdec"] = record
        bundle.records["encdec_module"] = ed
        metrics = {"decoder_layers": record["decoder_layers"], "encoder_layers": record["encoder_layers"]}
        for k, v in scores.items():
            metrics[f"ppl_{k}"] = v["perplexity"]
        if train:
            metrics.update(steps=train["steps"], loss=train["loss"]["last"])
        return PassResult(True, metrics)

    def ensures(self, bundle, result) -> None:
        ed = bundle.records.get("encdec_module")
        if not isinstance(ed, EncDec) or bundle.model is not ed.decoder:
            raise PreconditionError("no encoder-decoder attached")
        if any(p.requires_grad for p in ed.parameters()):
            raise PreconditionError("the encoder-decoder was left trainable")


def _greedy(teacher, tokenizer, cfg, key: str, bf16: bool) -> tuple[list[int], list[dict]]:
    """pick=greedy's layers (pick.py), cached by the source's weights and the search's options."""
    import json

    from ...models.corpus import calibration_batches
    from ..training import run_key
    from .pick import greedy_layers
    from .train import cache_root
    opts = {"search": "greedy", "k": cfg.decoder_layers, "windows": cfg.search_windows, "seq_len": cfg.seq_len,
            "seed": cfg.seed, "calib": cfg.training_options().get("calib")}
    path = cache_root() / f"pick-{run_key(key, opts)}.json"
    if path.is_file():
        found = json.loads(path.read_text())
        log.info("greedy layer search: reusing %s", path.name)
        return found["layers"], found["trace"]
    shape = (cfg.search_windows, cfg.seq_len)
    windows = calibration_batches(tokenizer, *shape, seed=cfg.seed, path=cfg.calib) if tokenizer is not None \
        else torch.randint(3, teacher.vocab, shape, generator=torch.Generator().manual_seed(cfg.seed))
    layers, trace = greedy_layers(teacher, windows, cfg.decoder_layers, bf16)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"layers": layers, "trace": trace}))
    tmp.replace(path)
    return layers, trace


def _gates(ed) -> dict | None:
    """A blended encoder's learned gates: per layer, the mean over heads, and the extremes (None without blend)."""
    g = ed.enc_graph.body.blend_gate
    if g is None:
        return None
    g = g.detach().clamp(0, 1)
    return {"layer_mean": [round(float(x), 4) for x in g.mean(1)], "min": round(float(g.min()), 4),
            "max": round(float(g.max()), 4), "mean": round(float(g.mean()), 4)}


def _params(encoder, decoder) -> int:
    """The encoder's own parameters (those it shares with the decoder, embeddings and head, not counted)."""
    shared = {p.data_ptr() for p in decoder.parameters()}
    seen, n = set(), 0
    for p in encoder.parameters():
        if p.data_ptr() in shared or p.data_ptr() in seen:
            continue
        seen.add(p.data_ptr())
        n += p.numel()
    return n


def build(arg: str, options) -> list:
    cfg = dataclasses.replace(parse_convert(f"encdec:{arg}" if arg else "encdec"), calib=options.calib)
    return [ConvertEncDecPass(cfg)]
