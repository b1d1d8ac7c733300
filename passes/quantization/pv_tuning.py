"""PV-Tuning (and the straight-through baseline) of a codebook-quantized model by distillation.

The loss is KL(teacher || student) of the next-token distributions on calibration windows, with
the uncompressed model (kept by the codebook pass) as teacher. Two kinds of steps:

  P step  codes fixed: Adam on the continuous parameters - codebooks, scales, norms (and biases).
  V step  the linearised discrete update (the reference's straight-through code update): the
          gradient w.r.t. each dequantized weight moves a float buffer T by an Adam-normalised
          (scale-free) step of lr_v (betas 0 / 0.95, the reference's code_betas); the fraction
          `tau` of weight groups where T is farthest from the current quantized weight are
          re-encoded towards T / scale, forcing a code change along T - Ŵ where l2 re-encoding
          would keep the old codes; with `trust` > 0 (default 0.01) the changes are then truncated, largest
          first, so that ||Ŵ_new - Ŵ_old|| <= trust * ||Ŵ_old|| (plus one group). All other codes
          stay (subspace descent). T is not reset to Ŵ (`decay` pulls it back, delta_decay).

mode "pv": every step is a P step; every `v_every`-th step (default: every step) also is a V step
on the same gradients, as the reference's optimizer updates codebooks, scales and codes in one step.
mode "ste": the straight-through baseline: every step updates the continuous parameters and
re-encodes *all* groups to the buffer (tau = 1), as plain STE fine-tuning does.
The embedding / LM head stay frozen (fp32).
"""
from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ...compiler.errors import InputError, PreconditionError
from ...compiler.pass_base import Pass, PassConfig, PassResult
from ...compiler.progress import bar
from ..calibration import calibration_ids
from ..spec_options import check_train_device
from ..training import autocast, cosine_rate, device_name, moved_to, train_device, use_bf16
from .codebook import TEACHER
from .codebook_linear import CodebookLinear, codebook_layers
from .codebook_search import directional_encode, l2_encode
from .farthest import farthest
from .quant_bits import bits_summary
from .tuned_state import load_tuned, read_meta, save_tuned, start_from, state_key, teacher_key

log = logging.getLogger(__name__)
MODES = ("pv", "ste")
PRECISIONS = ("f32", "bf16", "auto")
SCHEDULES = ("constant", "cosine")
V_BETA2 = 0.95                 # the V step's Adam second-moment rate (AQLM's pv-tuning code_betas = (0, 0.95): with
                               # beta1 = 0 the first moment is the gradient itself, so no buffer keeps it)


@dataclass(frozen=True)
class PVTuningConfig(PassConfig):
    mode: str = "pv"
    steps: int = 100
    batch: int = 4                 # windows per step
    samples: int = 32              # calibration windows cycled through
    seqlen: int = 256
    lr: float = 1e-4               # P step: Adam on codebooks, scales, norms
    lr_v: float = 1e-3             # V step: Adam step on the dequantized-weight buffers
    tau: float = 0.01              # pv: fraction of groups a V step may re-encode
    v_every: int = 1               # pv: every v_every-th step also updates codes (V step)
    decay: float = 0.0             # pull of the buffers back to the quantized weights after a V step
    trust: float = 0.01            # pv: trust ratio on the relative weight change of a V step (0: off;
                                   # 1e-2 is the reference's code_trust_ratio in its PV-Tuning commands)
    seed: int = 1
    calib: str | None = None
    device: str = "auto"           # where the steps run: auto (a CUDA device when torch sees one), cpu, cuda
    seconds: float = 0.0           # a time budget: stop after the step that passes it (0: steps alone)
    state: str | None = None       # a tuned-state file: loaded when it exists (same key), else written (tuned_state.py)
    init: str = ""                 # the quantizer's options (quant_methods.py), part of the state file's key
    start: str | None = None       # from=FILE: a tuned-state file to continue tuning from (its key joins the new key)
    precision: str = "f32"         # the trunk's matmuls: f32, bf16 (autocast; the head and the loss stay f32), or
                                   # auto (bf16 where the CPU has bf16 instructions or on a GPU that has it)
    schedule: str = "constant"     # lr, lr_v and trust over the budget: constant, or cosine (5 % warm-up, then cosine
                                   # decay to 0 over whichever of steps / seconds runs out first). trust too: a V step
                                   # forces code changes however small lr_v makes T - W, and trust bounds them

    def __post_init__(self):
        check_train_device(f"--quantize {self.mode}", self.device)
        if self.seconds < 0:
            raise InputError(f"seconds must be >= 0, got {self.seconds}")
        if self.mode not in MODES:
            raise InputError(f"tuning mode must be one of {', '.join(MODES)}, got '{self.mode}'")
        for name in ("steps", "batch", "samples", "seqlen", "v_every"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.tau <= 1:
            raise InputError(f"tau must be in (0, 1], got {self.tau}")
        if not (self.lr > 0 and self.lr_v > 0):
            raise InputError("lr and lr_v must be > 0")
        if self.trust < 0:
            raise InputError(f"trust must be >= 0, got {self.trust}")
        if not 0 <= self.decay <= 1:
            raise InputError(f"decay must be in [0, 1], got {self.decay}")
        if self.precision not in PRECISIONS:
            raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, got '{self.precision}'")
        if self.schedule not in SCHEDULES:
            raise InputError(f"schedule must be one of {', '.join(SCHEDULES)}, got '{self.schedule}'")


LOSS_CHUNK = 256                # tokens per head + softmax chunk of the distillation loss


def _hidden(model, ids: torch.Tensor, bf16: bool = False) -> torch.Tensor:
    """The last hidden states (after the final norm), [tokens, C], in float32; bf16: the trunk under bfloat16
    autocast."""
    with autocast(ids.device, bf16):
        h = model.get_decoder()(input_ids=ids, use_cache=False).last_hidden_state
    return h.flatten(0, 1).float()


def _log_probs(model, h: torch.Tensor) -> torch.Tensor:
    logits = model.get_output_embeddings()(h).float()
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return F.log_softmax(logits, -1)


def distill_loss(student, teacher, ids: torch.Tensor, backward: bool = False,
                 chunk: int = LOSS_CHUNK, bf16: bool = False) -> torch.Tensor:
    """Mean over tokens of KL(teacher || student) of the next-token distributions.

    The head and the softmax run over `chunk` tokens at a time, so no [tokens, vocab] tensor larger than a
    chunk is alive (at a 151,936-token vocabulary and 4 x 256 tokens a full one is 622 MB, and the loss held
    several). backward=True also backpropagates: each chunk's gradient to the student's hidden states, then one
    backward through the trunk; the returned loss is then detached. bf16: both trunks run under bfloat16 autocast;
    the head, the softmax and the KL stay float32 (bf16 logits are off by about 0.1 at this scale, as large as the
    KL being minimised)."""
    with torch.no_grad():
        th = _hidden(teacher, ids, bf16)
    sh = _hidden(student, ids, bf16)
    n = sh.shape[0]
    hs = sh.detach().requires_grad_(True) if backward else sh
    total = torch.zeros((), device=sh.device)
    for i in range(0, n, chunk):
        with torch.no_grad():
            t = _log_probs(teacher, th[i:i + chunk])
        part = F.kl_div(_log_probs(student, hs[i:i + chunk]), t, log_target=True, reduction="sum") / n
        if backward:
            part.backward()
            part = part.detach()
        total = total + part
    if backward:
        sh.backward(hs.grad)
    return total


@contextlib.contextmanager
def checkpointed(layers):
    """Activation checkpointing of each decoder layer while gradients are on: a layer keeps only its input for the
    backward pass and recomputes the rest there (rebuilt weights, attention, MLP activations), so the backward
    holds one layer's intermediates at a time instead of every layer's (about 10 bytes per quantized weight plus
    the activations; several GB on a 0.5B model). Same gradients, about one more forward pass of time."""
    from torch.utils.checkpoint import checkpoint

    def wrap(forward):
        def run(*args, **kwargs):
            if not torch.is_grad_enabled():
                return forward(*args, **kwargs)
            return checkpoint(forward, *args, use_reentrant=False, **kwargs)
        return run

    for layer in layers:
        layer.forward = wrap(layer.forward)
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward                   # the instance attribute: the class's forward again


def share_frozen_embeddings(student, teacher) -> int:
    """Let the teacher use the student's embedding and head where they are still equal (they are frozen in the
    student and never quantized): one copy instead of two (544 MB on a 151,936 x 896 vocabulary). -> bytes saved."""
    saved = 0
    for get in ("get_input_embeddings", "get_output_embeddings"):
        s_mod, t_mod = getattr(student, get)(), getattr(teacher, get)()
        if s_mod is None or t_mod is None or s_mod.weight is t_mod.weight:
            continue
        if s_mod.weight.shape == t_mod.weight.shape and torch.equal(s_mod.weight, t_mod.weight):
            saved += t_mod.weight.numel() * t_mod.weight.element_size()
            t_mod.weight = s_mod.weight
    return saved


class PVTrainer:
    """P and V steps on a model whose decoder Linears are CodebookLinear (unpacked while training)."""

    def __init__(self, model, teacher, norms: list[torch.nn.Parameter], lr: float, lr_v: float,
                 decay: float = 0.0, trust: float = 0.0, checkpoint: bool = True, bf16: bool = False):
        self.model, self.teacher, self.lr_v, self.decay, self.trust = model, teacher, lr_v, decay, trust
        self.bf16 = bf16
        self.decoder_layers = list(getattr(model.get_decoder(), "layers", [])) if checkpoint else []
        self.layers = self.find_layers(model)
        if not self.layers:
            raise PreconditionError("the model has no quantized layers to tune")
        self._frozen = [(p, p.requires_grad) for p in model.parameters()]
        model.requires_grad_(False)
        params = []
        for q in self.layers.values():
            q.unpack()
            params += self.continuous(q) + ([q.bias] if q.bias is not None else [])
        params += list(norms)
        for p in params:
            p.requires_grad_(True)
        self.opt = torch.optim.Adam(params, lr=lr)
        self.buffers: dict[str, list] = {}    # name -> [T, m, v, t] of the V step's Adam on T

    def set_rates(self, lr: float, lr_v: float, trust: float) -> None:
        """The P step's and the V step's rates and the V step's trust ratio for the next step (a schedule)."""
        for group in self.opt.param_groups:
            group["lr"] = lr
        self.lr_v, self.trust = lr_v, trust

    @staticmethod
    def find_layers(model) -> dict:
        return codebook_layers(model)

    @staticmethod
    def continuous(q) -> list:
        """The layer's continuous parameters the P step trains."""
        return [q.codebooks, q.scales]

    def _backward(self, ids: torch.Tensor, tap: bool) -> float:
        for q in self.layers.values():
            q.tap, q.tapped = tap, None
        self.opt.zero_grad(set_to_none=True)
        with checkpointed(self.decoder_layers):
            return float(distill_loss(self.model, self.teacher, ids, backward=True, bf16=self.bf16))

    def p_step(self, ids: torch.Tensor) -> float:
        loss = self._backward(ids, tap=False)
        self.opt.step()
        return loss

    def v_step(self, ids: torch.Tensor, tau: float, also_p: bool = False) -> tuple[float, float]:
        """-> (loss, fraction of groups whose codes changed)."""
        loss = self._backward(ids, tap=True)
        grads = {n: q.tapped.grad.detach() for n, q in self.layers.items()}
        for q in self.layers.values():
            q.tap, q.tapped = False, None
        if also_p:
            self.opt.step()
        changed = total = 0
        with torch.no_grad():
            for name, q in self.layers.items():
                c, n = self._update_codes(name, q, grads[name], tau)
                changed, total = changed + c, total + n
        self.opt.zero_grad(set_to_none=True)
        return loss, changed / max(total, 1)

    def move_target(self, name: str, w_hat: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """One Adam-normalised step of the layer's float buffer T against the gradient; -> T."""
        st = self.buffers.setdefault(name, [w_hat.clone(), torch.zeros_like(grad), 0])
        target, v, _ = st
        st[2] += 1
        v.mul_(V_BETA2).addcmul_(grad, grad, value=1 - V_BETA2)
        step = self.lr_v * math.sqrt(1 - V_BETA2 ** st[2])     # bias correction (beta1 = 0 needs none)
        return target.addcdiv_(grad, v.sqrt().add_(1e-8), value=-step)

    def _update_codes(self, name: str, q: CodebookLinear, grad: torch.Tensor, tau: float) -> tuple[int, int]:
        w_hat = q.dequantize()
        target = self.move_target(name, w_hat, grad)
        out_f, ng, nc = q.codes.shape
        g = q.scheme.group
        far = (target - w_hat).square().reshape(out_f, ng, g).sum(-1).flatten()      # [out * ng]
        n_sel = far.numel() if tau >= 1 else int(math.ceil(tau * far.numel()))
        sel = farthest(far, n_sel) if n_sel < far.numel() else torch.arange(far.numel(), device=far.device)
        flat_codes = q.codes.reshape(-1, nc)
        old = flat_codes[sel].long()
        goal = (target / q.scales).reshape(out_f * ng, g)[sel]
        books = q.codebooks.detach()
        new = directional_encode(goal, old, books) if tau < 1 else l2_encode(goal, old, books)
        if self.trust > 0 and tau < 1:
            rows = sel // ng
            delta = (books.gather(1, new.T.unsqueeze(-1).expand(-1, -1, g)).sum(0)
                     - books.gather(1, old.T.unsqueeze(-1).expand(-1, -1, g)).sum(0)) * q.scales[rows]
            cum = delta.square().sum(-1).cumsum(0).sqrt()
            keep = 1 + int(torch.searchsorted(cum, self.trust * w_hat.norm()))
            new[keep:] = old[keep:]
        flat_codes[sel] = new.to(flat_codes.dtype)
        if self.decay:
            target.lerp_(q.dequantize(), self.decay)
        return int((new != old).any(-1).sum()), far.numel()

    def finish(self) -> None:
        for q in self.layers.values():
            q.tap, q.tapped = False, None
            q.pack()
        for p, req in self._frozen:
            p.requires_grad_(req)
        self.buffers.clear()


def norm_parameters(adapter) -> list[torch.nn.Parameter]:
    out = [adapter.final_norm.weight]
    for i in range(adapter.num_layers):
        out += [n.weight for n in adapter.norms(i).values() if getattr(n, "weight", None) is not None]
    return out


class PVTuningPass(Pass):
    name = "tune-pv"
    config_class = PVTuningConfig
    trainer_class = PVTrainer
    label = None                  # the method recorded in records["quantization"] (default: the mode)

    def requires(self, bundle) -> None:
        if not codebook_layers(bundle.model):
            raise PreconditionError("no CodebookLinear layers: run codebook quantization first")
        if bundle.records.get(TEACHER) is None:
            raise PreconditionError("no teacher model: run codebook quantization with keep_teacher=True first")

    def call(self, bundle) -> PassResult:
        cfg = self.config
        teacher = bundle.records.pop(TEACHER)
        ids = bundle.records.get("calibration_ids")
        if not isinstance(ids, torch.Tensor):
            ids = calibration_ids(bundle, cfg.samples, cfg.seqlen, cfg.seed, cfg.calib)
        start_meta = read_meta(Path(cfg.start)) if cfg.start else {}
        key = state_key(teacher, ids, asdict(cfg), start_meta.get("key")) if cfg.state else None
        if ids.shape[0] > cfg.batch:            # the last windows are held out for the before/after KL
            ids, held = ids[: -cfg.batch], ids[-cfg.batch:]
        else:
            held = ids
        t0 = time.perf_counter()
        model = bundle.model
        model.eval()                            # no dropout: the loss is deterministic per batch
        shared = share_frozen_embeddings(model, teacher)
        if shared:
            log.info("teacher shares the student's frozen embedding/head (%.0f MB)", shared / 2**20)
        norms = norm_parameters(bundle.adapter)
        if cfg.state and Path(cfg.state).is_file():
            tuned = load_tuned(Path(cfg.state), key, self.trainer_class.find_layers(model), norms)
            log.info("%s tuning: loaded %s (%s steps on %s), no training", cfg.mode, cfg.state, tuned.get("steps"),
                     tuned.get("device"))
            tuned["loaded_from"] = {"state": cfg.state, "key": key}
        else:
            started, t_key = None, teacher_key(teacher) if cfg.start or cfg.state else ""
            if cfg.start:
                started = start_from(Path(cfg.start), start_meta, t_key, self.trainer_class.find_layers(model), norms)
                log.info("%s tuning: continues %s (%s steps)", cfg.mode, cfg.start, started["steps"])
            dev = train_device(cfg.device)
            with moved_to(dev, model, teacher):
                tuned = self._train(model, teacher, norms, ids.to(dev), held.to(dev))
            tuned["device"] = device_name(dev)
            if started:
                tuned["started_from"] = started
            if cfg.state:
                save_tuned(Path(cfg.state), key, self.trainer_class.find_layers(model), norms, tuned, t_key)
                tuned["saved_to"] = {"state": cfg.state, "key": key}
        del teacher
        seconds = time.perf_counter() - t0
        rec = bundle.records.setdefault("quantization", {})
        rec["method"] = self.label or cfg.mode
        rec.update(bits_summary(bundle.adapter))
        rec["tuning"] = {"mode": cfg.mode, "batch": cfg.batch, "lr": cfg.lr, "lr_v": cfg.lr_v,
                         "tau": 1.0 if cfg.mode == "ste" else cfg.tau, "v_every": cfg.v_every,
                         "trust": cfg.trust, "seconds_budget": cfg.seconds, **tuned}
        rec.setdefault("seconds", {})["pv_tuning"] = round(seconds, 1)
        log.info("%s tuning: %d steps, held-out KL %.4f -> %.4f, %.1fs", cfg.mode, tuned["steps"],
                 tuned["kl_heldout_before"], tuned["kl_heldout_after"], seconds)
        return PassResult(True, {"mode": cfg.mode, "steps": tuned["steps"], "kl_before": tuned["kl_heldout_before"],
                                 "kl_after": tuned["kl_heldout_after"]})

    def _train(self, model, teacher, norms: list, ids: torch.Tensor, held: torch.Tensor) -> dict:
        """The P and V steps on ids (on the training device), up to cfg.steps or past cfg.seconds; -> the record."""
        cfg = self.config
        bf16 = use_bf16(cfg.precision, ids.device)
        trainer = self.trainer_class(model, teacher, norms, cfg.lr, cfg.lr_v, cfg.decay, cfg.trust, bf16=bf16)
        losses, changes = [], []
        t0 = time.perf_counter()
        try:
            with torch.no_grad():
                kl_before = float(distill_loss(model, teacher, held))
            order = torch.randperm(ids.shape[0], generator=torch.Generator().manual_seed(cfg.seed))
            with bar(cfg.steps, f"{cfg.mode}-tuning") as pb:
                for step in range(cfg.steps):
                    pick = order[(torch.arange(cfg.batch) + step * cfg.batch) % ids.shape[0]]
                    batch = ids[pick.to(ids.device)]
                    if cfg.schedule == "cosine":
                        f = cosine_rate(1.0, step, cfg.steps, time.perf_counter() - t0, cfg.seconds or math.inf)
                        trainer.set_rates(cfg.lr * f, cfg.lr_v * f, cfg.trust * f)
                    if cfg.mode == "ste":
                        loss, frac = trainer.v_step(batch, tau=1.0, also_p=True)
                        changes.append(frac)
                    elif (step + 1) % cfg.v_every == 0:
                        loss, frac = trainer.v_step(batch, tau=cfg.tau, also_p=True)
                        changes.append(frac)
                    else:
                        loss = trainer.p_step(batch)
                    losses.append(round(loss, 5))
                    pb.set_postfix_str(f"kl {loss:.4f}")
                    pb.update(1)
                    if cfg.seconds and time.perf_counter() - t0 >= cfg.seconds:
                        log.info("%s tuning: time budget %.0fs reached after %d steps", cfg.mode, cfg.seconds,
                                 step + 1)
                        break
        finally:
            trainer.finish()
        with torch.no_grad():
            kl_after = float(distill_loss(model, teacher, held))
        return {"steps": len(losses), "steps_asked": cfg.steps, "kl_heldout_before": round(kl_before, 5),
                "kl_heldout_after": round(kl_after, 5), "losses": losses,
                "code_change_fraction": [round(c, 6) for c in changes], "precision": "bf16" if bf16 else "f32",
                "schedule": cfg.schedule, "train_seconds": round(time.perf_counter() - t0, 1)}
