"""Run the exported graphs (ONNX Runtime CPU, OpenVINO CPU in f32) against the torch model.

Protocol: two fixed prompts, each prefilled then decoded for `steps` greedy tokens; the torch model
picks the tokens and the graphs are fed the same ones (teacher forcing), so every step compares
logits of the same prefix. Measured per backend: max |logit diff| over all prompt positions and
steps, and greedy agreement (the fraction of the 2 x (1 + steps) next-token argmaxes that match).

Tolerances by weight precision (max |logit diff|, min greedy agreement), set from measurements on
SmolLM2-135M (see TOLERANCES): fp32 is an exact rewrite; the others are lossy, and for them greedy
agreement is the real check (a broken graph agrees near 0).

An exact rewrite still differs by f32 rounding, and how much depends on the model: a badly pruned one
carries larger activations and rounds more. So the fp32 limit is the larger of TOLERANCES' figure and
NOISE_FACTOR x torch's own disagreement with itself (the cached step-by-step logits against one uncached
forward of the same tokens); SmolLM2-135M: self-disagreement 5.7e-5, OpenVINO 1.1e-4 (2x); after
channel-magnitude:0.2, 5.5e-4 and 1.5e-3 (3x).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch

from ...compiler.bundle import ModelBundle
from ...compiler.errors import InputError, PreconditionError, ValidationError
from ...compiler.pass_base import Pass, PassConfig, PassResult

log = logging.getLogger(__name__)
PROMPTS = ("The capital of France is", "def fibonacci(n):\n    ")
# weights -> (max |logit diff|, min greedy agreement)
# measured on SmolLM2-135M (2 prompts, 8 steps): fp32 6e-5 / 1.1e-4 (ORT / OV), greedy 1.0; int8 OV 1.71,
# greedy 0.89; int4 14.7 / 13.7, greedy 0.78. fp16 is not measured on the real model yet (tiny: 3e-4).
TOLERANCES = {"fp32": (1e-3, 1.0), "fp16": (0.5, 0.85), "int8": (3.0, 0.75), "int4": (25.0, 0.6)}
# gptq-int / pv-int graphs hold the torch model's own codes exactly; what differs is the runtime's arithmetic:
# OpenVINO's CPU plugin quantizes activations to int8 in groups for int4/int8 weights (dynamic quantization)
INT_CODES = (2.0, 0.85)
# ... and int8 activations can swap two tokens whose torch logits are this close (a tiny random model's are): for int
# codes, a backend's pick within TIE of torch's top logit counts as agreeing (counted as `near_ties`)
TIE = 0.05
NOISE_FACTOR = 8.0
BACKENDS = ("onnxruntime", "openvino")
FORMAT_OF = {"onnxruntime": "onnx", "openvino": "openvino"}      # backend -> the graph format it runs


def backends_for(formats) -> tuple:
    """The validation backends for an artifact's graph formats ("onnx" -> onnxruntime, "openvino")."""
    return tuple(b for b in BACKENDS if FORMAT_OF[b] in formats)


@dataclass(frozen=True)
class ValidateConfig(PassConfig):
    weights: str = "fp32"
    steps: int = 8
    backends: tuple = BACKENDS

    def __post_init__(self):
        if self.weights not in TOLERANCES:
            raise InputError(f"unknown weight precision '{self.weights}' (choose from {', '.join(TOLERANCES)})")
        if self.steps < 1:
            raise InputError(f"validation steps must be >= 1, got {self.steps}")
        bad = [b for b in self.backends if b not in BACKENDS] or ([""] if not self.backends else [])
        if bad:
            raise InputError(f"unknown validation backend '{bad[0]}' (choose from {', '.join(BACKENDS)})")


def prompt_ids(bundle: ModelBundle) -> list[np.ndarray]:
    """The fixed prompts as [1, N] token ids (fixed ids when the bundle has no tokenizer: tiny test models)."""
    if bundle.tokenizer is None:
        v = bundle.adapter.vocab_size
        return [np.array([[(7 * i + 3) % v for i in range(6)]]), np.array([[(11 * i + 5) % v for i in range(9)]])]
    return [np.array([bundle.tokenizer(p, add_special_tokens=False)["input_ids"]], dtype=np.int64) for p in PROMPTS]


@torch.no_grad()
def torch_reference(model, ids: np.ndarray, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Greedy continuation with the torch model: (tokens [1, N + steps], logits [1, N + steps, V])."""
    seq = torch.from_numpy(ids)
    out = model(seq, use_cache=True)
    logits, past = [out.logits], out.past_key_values
    for _ in range(steps):
        nxt = logits[-1][:, -1:].argmax(-1)
        seq = torch.cat((seq, nxt), dim=1)
        out = model(nxt, past_key_values=past, use_cache=True)
        logits.append(out.logits)
        past = out.past_key_values
    return seq.numpy(), torch.cat(logits, dim=1).float().numpy()


@torch.no_grad()
def self_noise(model, tokens: np.ndarray, ref_logits: np.ndarray) -> float:
    """max |logit diff| between torch's cached step-by-step logits and one uncached forward of the same tokens."""
    full = model(torch.from_numpy(tokens), use_cache=False).logits.float().numpy()
    return float(np.abs(full - ref_logits).max())


def agreement(logits: np.ndarray, ref: np.ndarray, tie: float = 0.0) -> tuple[int, int]:
    """Greedy agreement of [k, V] logits with the reference's: (positions agreeing, of them near ties: a different
    token whose reference logit is within `tie` of the reference's top)."""
    pick, best = logits.argmax(-1), ref.argmax(-1)
    near = (pick != best) & (np.take_along_axis(ref, pick[:, None], -1)[:, 0] >= ref.max(-1) - tie)
    return int((pick == best).sum() + near.sum()), int(near.sum())


def noise_limit(limit: float, noise: float) -> float:
    """An exact rewrite's max |logit diff| limit: the table's figure, or NOISE_FACTOR x torch's self-disagreement."""
    return float(f"{max(limit, NOISE_FACTOR * noise):.3g}")


def uncut_room(graphs: dict) -> int | None:
    """Tokens a fixed-cache artifact takes before its first cut (M + buffer), None for a full cache."""
    for rec in graphs.values():
        if isinstance(rec, dict) and rec.get("cache") == "fixed":
            kv = rec.get("kv_cache") or {}
            return int(kv.get("slots", 0)) + int(kv.get("buffer", 0))
    return None


def load_for_check(bundle: ModelBundle, backend: str, graphs: dict):
    """The bundle's just-written whole-model graphs loaded by the runtime (runtime/graph_set.py) on the CPU, every
    position's logits kept: validation runs the graphs on the code path an app runs them on."""
    from ...runtime.graph_set import load_graphs
    return load_graphs(bundle.workdir, graphs, backend, "cpu", full_logits=True)


def run_graphs(graphs, tokens: np.ndarray, n_prompt: int) -> np.ndarray:
    """Prefill tokens[:, :n_prompt], then decode the rest one by one, with the runtime's decode functions
    (runtime/decode.py); logits [1, N, V]."""
    from ...runtime.decode import decode_one, prefill
    state = graphs.new_state(tokens.shape[1])
    rows = [prefill(state, tokens[0, :n_prompt], all_logits=True)]
    for t in tokens[0, n_prompt:]:
        rows.append(np.array(decode_one(state, int(t)))[None])
    return np.concatenate(rows)[None]


class ValidatePass(Pass):
    name = "validate"
    config_class = ValidateConfig

    def requires(self, bundle: ModelBundle) -> None:
        graphs = bundle.records.get("graphs")
        if not graphs:
            raise PreconditionError("no exported graphs to validate (run export-onnx and export-openvino first)")
        for name, rec in graphs.items():
            for key in (FORMAT_OF[b] for b in self.config.backends):   # the formats written, each validated
                if key not in rec or not (bundle.workdir / rec[key]).is_file():
                    raise PreconditionError(f"graph '{name}' has no {key} file (run export-{key} first)")

    def call(self, bundle: ModelBundle) -> PassResult:
        graphs = bundle.records["graphs"]
        prompts = prompt_ids(bundle)
        ed = bundle.records.get("encdec_module")    # an encoder-decoder: logits from the prompt's last token on
        reference = ed.reference if ed is not None else (lambda p, n: torch_reference(bundle.model, p, n))
        refs = [reference(p, self.config.steps) for p in prompts]
        room = uncut_room(graphs)
        if room is not None:    # a fixed cache equals the full one until its first cut (validate-kv-cache does the rest)
            prompts = [p[:, :max(1, min(p.shape[1], room - 1))] for p in prompts]
            refs = [(t[:, :room], lg[:, :room]) for t, lg in refs]
        int_codes = "int" in (bundle.records.get("quantization") or {})
        max_diff, agree = INT_CODES if int_codes else self.config_tolerance()
        noise = 0.0
        if self.config.weights == "fp32" and not int_codes:
            noise = max(float(np.abs(ed.uncached(t, p.shape[1]) - lg).max()) if ed is not None
                        else self_noise(bundle.model, t, lg) for p, (t, lg) in zip(prompts, refs))
        max_diff = noise_limit(max_diff, noise)
        results, metrics = {}, {}
        for backend in self.config.backends:
            t0 = time.perf_counter()
            loaded = load_for_check(bundle, backend, graphs)
            diffs, hits, ties, total = [], 0, 0, 0
            for ids, (tokens, ref_logits) in zip(prompts, refs):
                logits = run_graphs(loaded, tokens, ids.shape[1])
                diffs.append(float(np.abs(logits - ref_logits).max()))
                k = tokens.shape[1] - ids.shape[1] + 1    # the last prompt position and every decode step
                h, t = agreement(logits[0, -k:], np.asarray(ref_logits[0, -k:]), TIE if int_codes else 0.0)
                hits, ties, total = hits + h, ties + t, total + k
            res = {"max_logit_diff": max(diffs), "greedy_agreement": round(hits / total, 4),
                   "seconds": round(time.perf_counter() - t0, 2), **({"near_ties": ties} if int_codes else {})}
            results[backend] = res
            metrics[f"{backend}_max_diff"] = float(f"{res['max_logit_diff']:.3g}")
            metrics[f"{backend}_greedy"] = res["greedy_agreement"]
        bundle.records["validation"] = {"weights": "int-codes" if int_codes else self.config.weights, "prompts": len(prompts),
                                        "steps": self.config.steps, "torch_self_noise": float(f"{noise:.3g}"),
                                        "tolerance": {"max_logit_diff": max_diff, "greedy_agreement": agree},
                                        "backends": results}
        bad = [f"{b}: max |logit diff| {r['max_logit_diff']:.3g} (limit {max_diff}), greedy agreement "
               f"{r['greedy_agreement']:.2f} (min {agree})" for b, r in results.items()
               if r["max_logit_diff"] > max_diff or r["greedy_agreement"] < agree]
        if bad:
            raise ValidationError(f"exported {self.config.weights} graphs differ from the torch model: " + "; ".join(bad))
        return PassResult(False, metrics)

    def config_tolerance(self) -> tuple[float, float]:
        return TOLERANCES[self.config.weights]
