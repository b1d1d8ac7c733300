"""Training SpecDec++'s acceptance-prediction head (runtime/speculative/accept_head.py) for an EAGLE drafter.

Data (SpecDec++ trains on the target's responses with draft tokens mixed in; here, the same question asked of the
runtime itself): greedy speculative generation with the trained drafter, k drafts every round, on prompts from
the calibration text. Each round gives, for its drafts in order, the head's features (the drafter's output state
and its three scalars) and a label: accepted (1) for the drafts before the first rejection, rejected (0) for the
first rejected one; drafts after it are dropped (their acceptance given the earlier ones is not observed), which
is the conditional probability the stopping rule multiplies. In greedy decoding the target's argmax decides, so
the labels are exact.

Training: weighted binary cross-entropy (SpecDec++ weighs the rarer class up; here both classes are weighted to
equal total weight, w_rej = n_acc / n_rej), AdamW, full batch, a fixed number of epochs. The head is an MLP:
features -> hidden (SiLU) -> hidden (SiLU) -> 1 (SpecDec++: a small ResNet on the draft model's last hidden state
of the model's width; here narrower, which runs in about 50 microseconds per draft in numpy).

Evaluation: the same rollouts on held-out prompts (evaluation split) give the head's cross-entropy (unweighted),
AUC and accuracy beside the baseline predictor, the drafter's own probability of its token (today's "confidence"
rule), so the table says whether the head knows more than the drafter's softmax.
"""
from __future__ import annotations

import logging
import time

import numpy as np

from ...runtime.speculative.accept_head import SCALARS

log = logging.getLogger(__name__)


class RecordingProposer:
    """An EagleProposer that keeps each drafted token's head features and its label (module docstring)."""

    def __init__(self, inner, features: list, labels: list, positions: list, baseline: list):
        self.inner = inner
        inner.collect = True
        self.out = (features, labels, positions, baseline)
        self._round = None

    def start(self) -> None:
        self.inner.start()

    def source(self, seq) -> str:
        return self.inner.source(seq)

    def propose(self, seq, k, config, sampling, sampler, **kw):
        drafts, rows = self.inner.propose(seq, k, config, sampling, sampler, **kw)
        self._round = (len(seq), list(self.inner.features[:len(drafts)]))
        return drafts, rows

    def rolled_back(self, length: int) -> None:
        self.inner.rolled_back(length)
        if self._round is None:
            return
        n0, xs = self._round
        self._round = None
        accepted = length - n0            # the round appended accepted drafts + the target's token
        feats, labels, positions, baseline = self.out
        for i, x in enumerate(xs[:accepted + 1]):
            feats.append(x)
            labels.append(1.0 if i < accepted else 0.0)
            positions.append(i)
            baseline.append(float(np.exp(x[-3])))      # the drafter's own probability of its token


def rollouts(model, adapter, drafter, prompts: list[list[int]], new_tokens: int, k: int = 8,
             what: str = "acceptance head: rollouts") -> tuple[dict, dict]:
    """Greedy speculative generation (torch target and drafter, k drafts a round) on `prompts`; -> (data:
    features [N, F], labels [N], positions [N], baseline [N]; the loop's statistics as JSON)."""
    from ...compiler.progress import bar
    from ...runtime.speculative.eagle import eagle_steps
    from ...runtime.speculative.loop import SpecConfig, SpecStats, speculative_generate
    from ...runtime.speculative.steps import cache_for, torch_graph_fn
    from .eagle_model import target_graph
    tg = target_graph(model, adapter)
    stats = SpecStats()
    feats, labels, positions, baseline = [], [], [], []
    with bar(len(prompts), what) as pb:
        for ids in prompts:
            cap = len(ids) + new_tokens + k + 2
            target, proposer = eagle_steps((torch_graph_fn(tg), cache_for(tg, cap)),
                                           (torch_graph_fn(drafter), cache_for(drafter, cap)), adapter.hidden_size,
                                           adapter.vocab_size, drafter.vocab_ids)
            rec = RecordingProposer(proposer, feats, labels, positions, baseline)
            speculative_generate(target, rec, ids, new_tokens, SpecConfig(k=k, draft_mode="fixed", k_max=k),
                                 stats=stats)
            pb.update(1)
    F = len(feats[0]) if feats else 0
    data = {"features": np.asarray(feats, dtype=np.float32).reshape(-1, F),
            "labels": np.asarray(labels, dtype=np.float32), "positions": np.asarray(positions, dtype=np.int64),
            "baseline": np.asarray(baseline, dtype=np.float64)}
    return data, stats.to_json()


def train_head(data: dict, hidden: int = 16, rank: int = 4, epochs: int = 400, lr: float = 1e-2,
               holdout: float = 0.2, seed: int = 0) -> tuple[dict[str, np.ndarray], dict]:
    """Fit the head on rollout data; -> (tensors w0, b0, w1, b1, w2, b2 as float32 over accept_head.features'
    layout, training summary). The state enters through its top `rank` principal directions (of the training
    rows) and every input is standardised; both are folded into w0 / b0, so the runtime reads the plain layout.
    The last `holdout` share of the rows (the last prompts' rounds) is kept out of the fit and picks the epoch."""
    import torch
    X, y = np.asarray(data["features"], dtype=np.float64), np.asarray(data["labels"], dtype=np.float32)
    n_acc, n_rej = float(y.sum()), float(len(y) - y.sum())
    S = SCALARS
    C = X.shape[1] - S
    sizes = [X.shape[1], hidden, hidden, 1]
    if n_acc == 0 or n_rej == 0 or len(y) < 10:   # one outcome only: a constant head at the smoothed rate
        log.warning("acceptance head: the rollouts had %d accepted and %d rejected drafts; the head is a constant",
                    n_acc, n_rej)
        rate = (n_acc + 1.0) / (len(y) + 2.0)
        tensors = {f"w{i}": np.zeros((b, a), dtype=np.float32) for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:]))}
        tensors.update({f"b{i}": np.zeros(b, dtype=np.float32) for i, b in enumerate(sizes[1:])})
        tensors["b2"][0] = np.log(rate / (1.0 - rate))
        return tensors, {"examples": int(len(y)), "accepted_share": round(n_acc / max(len(y), 1), 4),
                         "hidden": hidden, "constant": True}
    cut = max(1, int(round(len(y) * (1.0 - holdout))))
    state, scal = X[:, :C], X[:, C:]
    mu = state[:cut].mean(axis=0)
    rank = int(min(rank, C, cut))
    proj = np.linalg.svd(state[:cut] - mu, full_matrices=False)[2][:rank] if rank else np.zeros((0, C))
    Z = np.concatenate([scal, (state - mu) @ proj.T], axis=1)           # [N, S + rank]
    zm, zs = Z[:cut].mean(axis=0), Z[:cut].std(axis=0) + 1e-6
    Z = ((Z - zm) / zs).astype(np.float32)
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(Z.shape[1], hidden), torch.nn.SiLU(), torch.nn.Linear(hidden, hidden),
                              torch.nn.SiLU(), torch.nn.Linear(hidden, 1))
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    Zt, yt = torch.from_numpy(Z), torch.from_numpy(y)
    fit, val = slice(0, cut), slice(cut, len(y))
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    t0 = time.perf_counter()
    best, best_state, best_epoch, first = float("inf"), None, 0, None
    for epoch in range(1, int(epochs) + 1):
        loss = bce(net(Zt[fit])[:, 0], yt[fit])
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = float(loss.detach()) if first is None else first
        if epoch % 10 == 0 or epoch == epochs:
            with torch.no_grad():
                v = float(bce(net(Zt[val])[:, 0], yt[val])) if cut < len(y) else float(loss.detach())
            if v < best:
                best, best_epoch = v, epoch
                best_state = {k: t.detach().clone() for k, t in net.state_dict().items()}
    net.load_state_dict(best_state)
    with torch.no_grad():
        fit_loss = float(bce(net(Zt[fit])[:, 0], yt[fit]))
    lin = [m for m in net if isinstance(m, torch.nn.Linear)]
    w0 = lin[0].weight.detach().double().numpy() / zs                   # [H, S + rank] on unstandardised Z
    b0 = lin[0].bias.detach().double().numpy() - w0 @ zm
    w_state = w0[:, S:] @ proj                                          # [H, C]: folds the projection
    tensors = {"w0": np.concatenate([w_state, w0[:, :S]], axis=1), "b0": b0 - w_state @ mu}
    for i, m in enumerate(lin[1:], start=1):
        tensors[f"w{i}"] = m.weight.detach().numpy()
        tensors[f"b{i}"] = m.bias.detach().numpy()
    tensors = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}
    return tensors, {"examples": int(len(y)), "fit_examples": cut, "accepted_share": round(n_acc / len(y), 4),
                     "hidden": hidden, "state_rank": rank, "epochs": best_epoch,
                     "bce": {"first": round(first, 4), "fit": round(fit_loss, 4), "holdout": round(best, 4)},
                     "seconds": round(time.perf_counter() - t0, 2)}


def auc(score: np.ndarray, label: np.ndarray) -> float | None:
    """Area under the ROC curve (rank statistic, ties averaged); None without both classes."""
    pos, neg = label > 0.5, label <= 0.5
    if not pos.any() or not neg.any():
        return None
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(len(score), dtype=np.float64)
    s = score[order]
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and s[j + 1] == s[i]:
            j += 1
        ranks[order[i:j + 1]] = 0.5 * (i + j) + 1.0
        i = j + 1
    return float((ranks[pos].sum() - pos.sum() * (pos.sum() + 1) / 2) / (pos.sum() * neg.sum()))


def predictor_metrics(p: np.ndarray, y: np.ndarray) -> dict:
    """Unweighted cross-entropy, AUC and accuracy (threshold 0.5) of probabilities p for labels y."""
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-6, 1 - 1e-6)
    bce = -float(np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
    a = auc(p, y)
    return {"bce": round(bce, 4), "auc": None if a is None else round(a, 4),
            "accuracy": round(float(np.mean((p > 0.5) == (y > 0.5))), 4)}


def evaluate_head(tensors: dict, data: dict) -> dict:
    """The head against the drafter's own probability on rollout data (held-out prompts)."""
    from ...runtime.speculative.accept_head import AcceptHead
    head = AcceptHead(tensors)
    y = data["labels"]
    if not len(y):
        return {"examples": 0}
    p = np.array([head.prob(x) for x in data["features"]])
    return {"examples": int(len(y)), "accepted_share": round(float(y.mean()), 4),
            "head": predictor_metrics(p, y), "drafter_probability": predictor_metrics(data["baseline"], y)}
