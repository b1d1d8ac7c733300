"""Drafter passes: a fused self-speculative drafter built from the target, or an external draft model.

Fused (`--drafter fused` or `fused:layers=8,steps=300,vocab=8192`): the drafter is the target's first L
layers, one trained exit layer (initialised from a copy of layer L, or of the last layer) and the shared
final norm and head (Balcony / LayerSkip-style self-speculation). Only the exit layer trains, by
self-distillation (KL to the frozen target) on the calibration text. The drafter shares embeddings and
the first L layers' KV cache with the target, so verification does not recompute them.
Reduced vocabulary (`vocab=N`): the drafter's head keeps the N most frequent calibration tokens; it just
proposes tokens from that set (probability 0 elsewhere), which keeps verification exact.

External (`--drafter PATH`): a draft model with the same tokenizer; checked, then packaged.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import torch

from ...compiler.errors import InputError, PreconditionError
from ...compiler.pass_base import Pass, PassConfig, PassResult
from .drafter_model import ExitModel, FusedDrafter, check_exit_layer, default_exit_layer

log = logging.getLogger(__name__)

INITS = ("layer", "last")


def positive_ints(cfg, keys, what: str) -> None:
    """InputError unless every option in `keys` of `cfg` is an int >= 1."""
    for k in keys:
        if not isinstance(getattr(cfg, k), int) or getattr(cfg, k) < 1:
            raise InputError(f"{what} {k} must be a positive integer, got {getattr(cfg, k)!r}")


@dataclass(frozen=True)
class FusedDrafterConfig(PassConfig):
    layers: int = 0            # exit point L (0: a quarter of the model's layers, e.g. 8 of 30)
    steps: int = 300           # training steps (SmolLM2-135M on 2 cores: about 6 min)
    seconds: float = 600.0     # training time budget; whichever of steps / seconds ends first
    vocab: int = 8192          # drafter head size (most frequent calibration tokens); 0 = full vocabulary
    init: str = "layer"        # exit layer starts as a copy of layer L ("layer") or of the last layer ("last")
    batch: int = 8             # windows per step
    seq_len: int = 128
    windows: int = 512         # training windows (target states are computed once for these; ~300 MB)
    holdout: int = 8           # held-out windows for the acceptance estimate
    lr: float = 5e-4
    seed: int = 0
    calib: str | None = None   # calibration text file (default: Brown calibration split)

    def __post_init__(self):
        positive_ints(self, ("steps", "batch", "seq_len", "windows", "holdout"), "drafter option")
        if self.layers < 0 or self.vocab < 0:
            raise InputError("drafter options layers and vocab must be >= 0")
        if self.seq_len < 2:
            raise InputError("drafter option seq_len must be >= 2")
        if not self.seconds > 0 or not self.lr > 0:
            raise InputError("drafter options seconds and lr must be > 0")
        if self.init not in INITS:
            raise InputError(f"drafter option init must be one of {', '.join(INITS)}, got {self.init!r}")


class FusedDrafterPass(Pass):
    """Builds and trains the early-exit drafter; records bundle.records["drafter"], attaches "drafter_module"."""

    name = "drafter-fused"
    config_class = FusedDrafterConfig

    def requires(self, bundle) -> None:
        if bundle.adapter.num_layers < 2:
            raise PreconditionError("a fused drafter needs a model with at least 2 layers")
        if self.config.layers:
            try:
                check_exit_layer(self.config.layers, bundle.adapter.num_layers)
            except InputError as e:
                raise PreconditionError(str(e)) from None

    def call(self, bundle) -> PassResult:
        from ...models.corpus import load_text, token_stream
        from .drafter_train import acceptance, frequent_tokens, target_states, token_windows, train_exit_layer, _logits
        cfg, model, ad = self.config, bundle.model, bundle.adapter
        L = cfg.layers or default_exit_layer(ad.num_layers)
        stream = token_stream(bundle.tokenizer, load_text("calib", cfg.calib))
        V = ad.vocab_size
        vocab_ids = None
        if cfg.vocab and cfg.vocab < V:
            eos = bundle.tokenizer.eos_token_id
            vocab_ids = frequent_tokens(stream, cfg.vocab, V, [eos] if eos is not None else [])
        windows = token_windows(stream, cfg.windows + cfg.holdout, cfg.seq_len, cfg.seed)
        init_from = L if cfg.init == "layer" else ad.num_layers - 1
        drafter = FusedDrafter(L, ExitModel(model, ad, L, init_from, vocab_ids), vocab_ids)
        head, tail = drafter.head_graph(), drafter.tail_graph(model, ad)

        h_in, h_out = target_states(model, ad, L, windows)
        n = cfg.windows
        held = (h_in[n:], h_out[n:])
        full_logits = lambda h: _logits(tail, h)   # the target's own norm + head
        before = acceptance(head, full_logits, *held, vocab_ids)
        frozen = [p for p in model.parameters()] + [p for p in head.parameters()
                                                   if all(p is not q for q in drafter.exit_model.trainable())]
        train = train_exit_layer(head, drafter.exit_model.trainable(), frozen, h_in[:n], h_out[:n], cfg.steps,
                                 cfg.seconds, cfg.batch, cfg.lr, cfg.seed)
        after = acceptance(head, full_logits, *held, vocab_ids)
        record = {"kind": "fused", "exit_layer": L, "layers": ad.num_layers, "init_from_layer": init_from,
                  "vocab_size": len(vocab_ids) if vocab_ids is not None else V, "full_vocab": V,
                  "vocab_coverage": _coverage(stream, vocab_ids),
                  "train": {**train, "windows": n, "seq_len": cfg.seq_len, "batch": cfg.batch},
                  "acceptance_before": before, "acceptance": after,
                  "exit_parameters": sum(p.numel() for p in drafter.exit_model.trainable()),
                  "head_parameters": drafter.exit_model.lm_head.weight.numel()}
        bundle.records["drafter"] = record
        bundle.records["drafter_module"] = drafter       # not JSON: stays out of the manifest, read by export
        return PassResult(True, {"exit_layer": L, "vocab": record["vocab_size"], "kl": train["loss"]["last"],
                                 "accept_greedy": after["greedy"], "accept_before": before["greedy"]})

    def ensures(self, bundle, result) -> None:
        drafter = bundle.records.get("drafter_module")
        if not isinstance(drafter, FusedDrafter):
            raise PreconditionError("no drafter attached")
        if any(p.requires_grad for p in drafter.exit_model.trainable()):
            raise PreconditionError("exit layer left trainable")


def _coverage(stream: torch.Tensor, vocab_ids) -> float:
    """Share of calibration tokens inside the drafter's vocabulary."""
    if vocab_ids is None:
        return 1.0
    return round(float(torch.isin(stream, torch.as_tensor(vocab_ids)).double().mean()), 4)


@dataclass(frozen=True)
class ExternalDrafterConfig(PassConfig):
    path: str = ""

    def __post_init__(self):
        if not self.path:
            raise InputError("--drafter: give 'fused' or the path of a draft model")


class ExternalDrafterPass(Pass):
    """Loads a draft model with the same tokenizer; records it and attaches it for export."""

    name = "drafter-external"
    config_class = ExternalDrafterConfig

    def call(self, bundle) -> PassResult:
        from ...models.sources import load_model
        draft = load_model(self.config.path)
        check_same_tokenizer(bundle, draft, self.config.path)
        ad = draft.adapter
        bundle.records["drafter"] = {"kind": "external", "source": draft.source, "layers": ad.num_layers,
                                     "parameters": ad.num_parameters(), "vocab_size": ad.vocab_size,
                                     "family": ad.family.name}
        bundle.records["drafter_module"] = draft
        return PassResult(True, {"draft_layers": ad.num_layers, "draft_parameters": ad.num_parameters()})


def check_same_tokenizer(target, draft, where: str) -> None:
    """Raise InputError unless the draft model's tokenizer and vocabulary match the target's."""
    tv, dv = target.adapter.vocab_size, draft.adapter.vocab_size
    if tv != dv:
        raise InputError(f"draft model {where} has vocabulary size {dv}, the target has {tv}: they must share "
                         "a tokenizer")
    a, b = target.tokenizer.get_vocab(), draft.tokenizer.get_vocab()
    if a != b:
        diff = next((k for k in sorted(set(a) ^ set(b) or {k for k in a if a[k] != b.get(k)})), "?")
        raise InputError(f"draft model {where} has a different tokenizer than the target (first difference: "
                         f"token {diff!r})")
    for name in ("eos_token_id", "bos_token_id"):
        if getattr(target.tokenizer, name) != getattr(draft.tokenizer, name):
            raise InputError(f"draft model {where} has a different {name} than the target")


# -- registration (targets/phases.py DRAFTERS) ---------------------------------------------------
def parse_options(arg: str, config_class, name: str, example: str):
    """'key=value,...' -> config_class(**options) (values typed by its fields); `calib` comes from --calib only."""
    types = {f.name: f.type for f in dataclasses.fields(config_class)}
    kw = {}
    for item in filter(None, (s.strip() for s in (arg or "").split(","))):
        key, eq, val = item.partition("=")
        if not eq or key not in types or key == "calib":
            known = ", ".join(k for k in types if k != "calib")
            raise InputError(f"--drafter {name}: bad option '{item}' (options: {known}; e.g. {example})")
        typ = {"int": int, "float": float}.get(str(types[key]), str)
        try:
            kw[key] = typ(val)
        except ValueError:
            raise InputError(f"--drafter {name}: option {key} needs a number, got '{val}'") from None
    return config_class(**kw)


def parse_fused(arg: str) -> FusedDrafterConfig:
    """'layers=8,steps=300' -> FusedDrafterConfig(layers=8, steps=300)."""
    return parse_options(arg, FusedDrafterConfig, "fused", "fused:layers=8,steps=300")


def build_fused(arg: str, options) -> list:
    cfg = dataclasses.replace(parse_fused(arg), calib=options.calib)
    return [FusedDrafterPass(cfg)]


def build_external(spec: str, options) -> list:
    from ...models.sources import resolve
    kind, _ = resolve(spec)          # fails fast (before the target loads) on a missing path
    if kind == "artifact":
        raise InputError(f"--drafter {spec} is an accelc artifact; give a model source (folder, .gguf, name)")
    return [ExternalDrafterPass(ExternalDrafterConfig(path=spec))]
