"""SpecDec++'s acceptance-prediction head (Huang et al. 2024, "SpecDec++: Boosting Speculative Decoding via
Adaptive Candidate Lengths") for the EAGLE drafter, and its stopping rules (draft mode "specdec").

After each draft the head predicts p_i, the probability that draft i is accepted given that drafts 1..i-1 were.
SpecDec++ stops drafting when the predicted probability that some draft of the round is rejected,
1 - prod_{j<=i} p_j, exceeds a threshold h. Here h is either given (`reject_threshold`, the paper's rule; it tunes
h by grid search) or, by default, follows from the costs the cost model measures on the backend in use
(`CostStop`): drafting one more token is worth it when the tokens it is expected to add, over the time it adds
(a draft step and one more verify position), beat the round's expected tokens per second so far. SpecDec++ shows
the optimal rule is a threshold on that probability; the cost rule is such a threshold, set per round from
measured costs instead of a constant (a departure, named in docs/passes/drafter.md).

The head's input (`features`): the drafter's output state h_i (its estimate of the target's next state; the
head's input in SpecDec++ is the draft model's last hidden state), RMS-normalised, and three scalars the paper's
head does not read (a departure): the drafter's log-probability of its own token, the entropy of its distribution
and the draft position. The head is a small MLP (its layers `w0, b0, w1, b1, ...`; SiLU between them; the last
has one output, a logit) trained by passes/drafting/accept_head.py on the drafter's own greedy rollouts.
It runs in numpy with elementwise products only: a BLAS matrix-vector product would start OpenBLAS threads that
spin on the cores the native decoder's workers need.
"""
from __future__ import annotations

import numpy as np

from ...compiler.errors import ArtifactError

SCALARS = 3           # log q(token), entropy of q, (position + 1) / POSITION_SCALE
POSITION_SCALE = 8.0


def features(h: np.ndarray, row: np.ndarray, token_col: int, position: int) -> np.ndarray:
    """The head's input for one draft: h [C] the drafter's output state, row [S] its logits over its own
    vocabulary, token_col the drafted token's column in row, position the draft's index in the round (0-based)."""
    h = np.asarray(h, dtype=np.float32).reshape(-1)
    hn = h / np.sqrt(np.float32((h * h).mean()) + np.float32(1e-6))
    z = np.asarray(row, dtype=np.float32).reshape(-1)
    z = z - z.max()
    e = np.exp(z)
    s = float(e.sum())
    logq = z - np.float32(np.log(s))
    q = e / np.float32(s)
    ent = -float((q * logq).sum())
    extra = np.array([float(logq[token_col]), ent, (position + 1) / POSITION_SCALE], dtype=np.float32)
    return np.concatenate([hn, extra])


class AcceptHead:
    """The trained head in numpy: layers [(w [out, in], b [out])], SiLU between them, a logit out."""

    def __init__(self, tensors: dict[str, np.ndarray]):
        self.layers = []
        i = 0
        while f"w{i}" in tensors:
            w = np.ascontiguousarray(tensors[f"w{i}"], dtype=np.float32)
            b = np.ascontiguousarray(tensors.get(f"b{i}", np.zeros(w.shape[0])), dtype=np.float32)
            if w.ndim != 2 or b.shape != (w.shape[0],) or (self.layers and self.layers[-1][0].shape[0] != w.shape[1]):
                raise ArtifactError(f"the acceptance head's layer {i} has shapes {w.shape}, {b.shape}")
            self.layers.append((w, b))
            i += 1
        if not self.layers or self.layers[-1][0].shape[0] != 1:
            raise ArtifactError("the acceptance head must end in one output")
        self.inputs = self.layers[0][0].shape[1]

    def prob(self, x: np.ndarray) -> float:
        """P(accepted) for one feature vector x [inputs]."""
        if x.shape[-1] != self.inputs:
            raise ArtifactError(f"the acceptance head reads {self.inputs} features, got {x.shape[-1]}")
        for j, (w, b) in enumerate(self.layers):
            x = (w * x).sum(axis=1) + b            # elementwise, no BLAS threads (module docstring)
            if j < len(self.layers) - 1:
                x = x / (1.0 + np.exp(-x))         # SiLU
        return float(1.0 / (1.0 + np.exp(-float(x[0]))))


def load_head(path) -> AcceptHead:
    from safetensors.numpy import load_file
    return AcceptHead(load_file(str(path)))


class FixedStop:
    """SpecDec++'s rule with a given threshold: stop once 1 - prod p_j > h."""

    def __init__(self, threshold: float):
        self.h = float(threshold)
        self.chain = 1.0

    def __call__(self, p: float) -> bool:
        self.chain *= p
        return 1.0 - self.chain > self.h


class CostStop:
    """Stop once one more draft is expected to lower the round's tokens per second. verify[w]: a pass over w
    positions (seconds, w = 1 .. cap + 1; verify[0] unused); draft: seconds per draft step. After i drafts with
    chain P_i = prod p_j the round expects E_i = 1 + sum_{j<=i} P_j tokens in T_i = i * draft + verify[i + 1]
    seconds; the next draft would add about P_i * p_i tokens (its own p is unknown until it is drafted: the last
    one's stands in) and draft + verify[i + 2] - verify[i + 1] seconds. Stop when E_{i+1} / T_{i+1} <= E_i / T_i."""

    def __init__(self, verify: list[float], draft: float):
        self.verify, self.draft = verify, float(draft)
        self.chain, self.expected, self.i = 1.0, 1.0, 0

    def __call__(self, p: float) -> bool:
        self.i += 1
        self.chain *= p
        self.expected += self.chain
        i, v = self.i, self.verify
        if i + 2 >= len(v):                        # the cap: no wider verify pass was measured
            return True
        t_now = i * self.draft + v[i + 1]
        t_next = t_now + self.draft + v[i + 2] - v[i + 1]
        e_next = self.expected + self.chain * p
        return e_next * t_now <= self.expected * t_next
