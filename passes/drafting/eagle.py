"""The EAGLE drafter pass (`--drafter eagle` or `eagle:seconds=1800,vocab=8192,...`): a one-layer feature-level
drafter (eagle_model.py) trained by distillation on the frozen target's hidden states (eagle_train.py).

The target's states over the calibration windows are computed once and cached; training runs for `steps` steps
or `seconds` seconds, whichever ends first (default: 30 minutes), and resumes after an interruption. Acceptance
is measured after training in greedy generation on held-out prompts from the evaluation split (disjoint from the
calibration text it trains on), per draft position.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import numpy as np

from ...compiler.errors import InputError, PreconditionError
from ...compiler.pass_base import Pass, PassConfig, PassResult
from .eagle_model import EagleGraph, default_init_layer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EagleConfig(PassConfig):
    steps: int = 100000        # training steps; whichever of steps / seconds ends first
    seconds: float = 1800.0    # training time budget (SmolLM2-135M on 2 cores: 30 minutes)
    vocab: int = 8192          # head size (most frequent calibration tokens); 0 = full vocabulary
    batch: int = 8             # windows per step
    seq_len: int = 128
    windows: int = 1024        # training windows (the target's states: windows x seq_len x C in float16)
    lr: float = 2e-3
    cls: float = 1.0           # weight of the distribution loss beside the state regression (EAGLE: 0.1)
    noise: float = 0.1         # uniform noise on the input states, relative to their RMS (EAGLE: 0.1)
    unroll: int = 1            # 2: also train on the drafter's own estimated states (training-time test)
    seed: int = 0
    precision: str = "auto"    # training matmuls: bf16 (autocast) where the CPU has bf16 instructions or on a GPU,
                               # else f32
    device: str = "auto"       # where the states and the training run: auto (a CUDA GPU when torch sees one), cpu, cuda
    eval_prompts: int = 8      # held-out prompts (evaluation split) for the acceptance measurement
    eval_tokens: int = 64
    head: int = 1              # 1: train SpecDec++'s acceptance head (draft mode specdec) on calibration rollouts
    head_prompts: int = 48     # its rollouts: calibration prompts x new tokens (greedy, 8 drafts a round)
    head_tokens: int = 96
    head_hidden: int = 16
    head_rank: int = 4         # the drafter's state enters the head through its top principal directions
    calib: str | None = None   # calibration text file (default: Brown calibration split)

    def __post_init__(self):
        from .drafter import positive_ints
        positive_ints(self, ("steps", "batch", "seq_len", "windows", "unroll", "head_prompts", "head_tokens",
                             "head_hidden"), "eagle option")
        if self.head_rank < 0:
            raise InputError(f"eagle option head_rank must be >= 0, got {self.head_rank}")
        if self.head not in (0, 1):
            raise InputError(f"eagle option head must be 0 or 1, got {self.head}")
        if self.seq_len < 3 or self.unroll > 2:
            raise InputError("eagle options: seq_len must be >= 3 and unroll 1 or 2")
        if self.vocab < 0 or self.eval_prompts < 0 or self.eval_tokens < 1:
            raise InputError("eagle options vocab and eval_prompts must be >= 0, eval_tokens >= 1")
        from ..spec_options import check_train_device
        check_train_device("--drafter eagle", self.device)
        if self.precision not in ("auto", "bf16", "f32"):
            raise InputError(f"eagle option precision must be auto, bf16 or f32, got {self.precision!r}")
        if not self.seconds > 0 or not self.lr > 0 or self.cls < 0 or self.noise < 0:
            raise InputError("eagle options seconds and lr must be > 0, cls and noise >= 0")

    def training_options(self) -> dict:
        """What changes the trained weights (the resume file's key)."""
        return {k: getattr(self, k) for k in ("steps", "vocab", "batch", "seq_len", "windows", "lr", "cls", "noise",
                                              "unroll", "seed")}


@dataclass
class EagleDrafter:
    """What the pass attaches to the bundle (bundle.records["drafter_module"]); export reads it."""

    graph: EagleGraph
    vocab_ids: np.ndarray | None
    accept_head: dict | None = None     # SpecDec++'s acceptance head (accept_head.train_head's tensors)


def held_out_prompts(tokenizer, n: int, length: int = 64) -> list[list[int]]:
    """n windows of `length` tokens spread over the evaluation split (never calibration text)."""
    from ...models.corpus import load_text, token_stream
    return spread_windows(token_stream(tokenizer, load_text("eval")), n, length)


def spread_windows(ids, n: int, length: int = 64) -> list[list[int]]:
    """Up to n windows of `length` tokens spread evenly over the token stream ids."""
    if n == 0 or ids.numel() < length:
        return []
    step = max(length, (ids.numel() - length) // n)
    return [ids[i * step:i * step + length].tolist() for i in range(n) if i * step + length <= ids.numel()]


class EagleDrafterPass(Pass):
    name = "drafter-eagle"
    config_class = EagleConfig

    def requires(self, bundle) -> None:
        if bundle.adapter.num_layers < 1:
            raise PreconditionError("an EAGLE drafter needs a decoder model")

    def call(self, bundle) -> PassResult:
        from ...models.corpus import load_text, token_stream
        from .drafter import _coverage
        from .drafter_train import frequent_tokens, token_windows
        from ..training import finished, fingerprint, run_key, train_device, use_bf16
        from .eagle_train import cache_root, held_out_acceptance, target_features, train_eagle
        cfg, model, ad = self.config, bundle.model, bundle.adapter
        stream = token_stream(bundle.tokenizer, load_text("calib", cfg.calib))
        V = ad.vocab_size
        vocab_ids = None
        if cfg.vocab and cfg.vocab < V:
            eos = bundle.tokenizer.eos_token_id
            vocab_ids = frequent_tokens(stream, cfg.vocab, V, [eos] if eos is not None else [])
        windows = token_windows(stream, cfg.windows, cfg.seq_len, cfg.seed)
        key = fingerprint(model, windows)
        dev = train_device(cfg.device)
        resume = cache_root() / f"train-{run_key(key, cfg.training_options())}.safetensors"
        # a finished training (here, or on another machine with the same model and options) needs no target states
        feats = None if finished(resume, cfg.steps, cfg.seconds) else \
            target_features(model, ad, windows, key, chunk=4 if dev.type == "cpu" else 64, device=dev)
        init_from = default_init_layer(ad.num_layers)
        graph = EagleGraph(model, ad, vocab_ids, init_from)
        bf16 = use_bf16(cfg.precision, dev)
        train = train_eagle(graph, windows, feats, cfg.steps, cfg.seconds, cfg.batch, cfg.lr, cfg.seed,
                            cfg.cls, cfg.noise, cfg.unroll, resume=resume, bf16=bf16, device=dev)
        graph.eval()
        prompts = held_out_prompts(bundle.tokenizer, cfg.eval_prompts)
        accept, held = (held_out_acceptance(model, ad, graph, prompts, cfg.eval_tokens) if prompts
                        else (None, None))
        head, head_record = (self._head(bundle, graph, stream, held) if cfg.head else (None, None))
        n_train = sum(p.numel() for p in graph.trainable())
        record = {"kind": "eagle", "layers": ad.num_layers, "init_from_layer": init_from,
                  "vocab_size": len(vocab_ids) if vocab_ids is not None else V, "full_vocab": V,
                  "vocab_coverage": _coverage(stream, vocab_ids),
                  "train": {**train, "windows": cfg.windows, "seq_len": cfg.seq_len, "batch": cfg.batch,
                            "lr": cfg.lr, "cls": cfg.cls, "noise": cfg.noise, "unroll": cfg.unroll,
                            "precision": "bf16" if bf16 else "f32", "state": resume.name},
                  "acceptance_held_out": accept, "trainable_parameters": n_train,
                  "head_parameters": graph.body.lm_head.weight.numel(), "accept_head": head_record}
        bundle.records["drafter"] = record
        bundle.records["drafter_module"] = EagleDrafter(graph, vocab_ids, head)
        first = (accept or {}).get("acceptance_by_position") or [None]
        return PassResult(True, {"vocab": record["vocab_size"], "steps": train["steps"],
                                 "loss": train["loss"]["last"], "accept_1": first[0],
                                 "tokens_per_round": (accept or {}).get("tokens_per_round")})

    def _head(self, bundle, graph, stream, held) -> tuple[dict, dict]:
        """SpecDec++'s acceptance head: rollouts on calibration prompts, training, and its metrics on the held-out
        rollouts beside the drafter's own probability (passes/drafting/accept_head.py)."""
        from .accept_head import evaluate_head, rollouts, train_head
        cfg = self.config
        prompts = spread_windows(stream, cfg.head_prompts)
        data, stats = rollouts(bundle.model, bundle.adapter, graph, prompts, cfg.head_tokens, k=8)
        tensors, summary = train_head(data, hidden=cfg.head_hidden, rank=cfg.head_rank, seed=cfg.seed)
        record = {"train": {**summary, "prompts": len(prompts), "new_tokens": cfg.head_tokens, "k": 8,
                            "rollout_acceptance_by_position": stats.get("acceptance_by_position")},
                  "held_out": evaluate_head(tensors, held) if held is not None else None}
        return tensors, record

    def ensures(self, bundle, result) -> None:
        d = bundle.records.get("drafter_module")
        if not isinstance(d, EagleDrafter):
            raise PreconditionError("no EAGLE drafter attached")
        if any(p.requires_grad for p in d.graph.trainable()):
            raise PreconditionError("the EAGLE drafter was left trainable")


def parse_eagle(arg: str) -> EagleConfig:
    """'seconds=600,vocab=8192' -> EagleConfig(seconds=600.0, vocab=8192)."""
    from .drafter import parse_options
    return parse_options(arg, EagleConfig, "eagle", "eagle:seconds=600,vocab=8192")


def build_eagle(arg: str, options) -> list:
    cfg = dataclasses.replace(parse_eagle(arg), calib=options.calib)
    return [EagleDrafterPass(cfg)]

