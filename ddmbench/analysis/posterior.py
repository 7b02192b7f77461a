"""The exact cluster posterior p*(k | x_t) of the empirical training distribution under the flow's noising.

With x_t = (1 - t) x_0 + t eps (``ddmbench.sampling.flow``) and x_0 drawn uniformly from the N training
images (in model space, [-1, 1]), x_t given x_0 = x_i is N((1 - t) x_i, t^2 I), so

    p*(k | x_t) = sum_{i in k} N(x_t; (1 - t) x_i, t^2 I) / sum_i N(x_t; (1 - t) x_i, t^2 I).

It is the Bayes-optimal router and the router's own training target (cross-entropy on (x_t, t) -> cluster of
x_0). Computed in float64 with log-sum-exp, streaming over chunks of the training set (memory B x chunk).
Next to it: the effective number of training points behind it, 1 / sum_i w_i^2 with w_i the normalised
per-image weights (about 1 where the posterior is the nearest training image's cluster).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

T_MIN = 1e-6  # t = 0 is the limit "nearest training image": a tiny t keeps -d^2 / 2t^2 finite and ordered


@dataclass(frozen=True)
class PosteriorResult:
    """log_p: (B, K) float64 log p*(k | x_t) (-inf for clusters below float64's range); n_eff: (B,) 1 / sum w_i^2."""

    log_p: torch.Tensor
    n_eff: torch.Tensor


class EmpiricalPosterior:
    """p*(k | x_t) over a fixed set of training images.

    train_x: (N, C, H, W) or (N, D) model-space images (kept in their dtype; each chunk is cast to float64);
    labels: (N,) cluster ids in [0, K); chunk: training images per step (memory: B x chunk float64).
    """

    def __init__(self, train_x: torch.Tensor, labels: torch.Tensor, num_clusters: int, chunk: int = 4096) -> None:
        if len(train_x) != len(labels) or len(train_x) == 0:
            raise ValueError(f"need one cluster label per training image, got {len(train_x)} images and "
                             f"{len(labels)} labels")
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        labels = labels.long()
        if int(labels.min()) < 0 or int(labels.max()) >= num_clusters:
            raise ValueError(f"cluster labels must lie in [0, {num_clusters}), got [{int(labels.min())}, "
                             f"{int(labels.max())}]")
        self.train = train_x.flatten(1)                                  # (N, D)
        self.labels = labels
        self.num_clusters = num_clusters
        self.chunk = chunk
        self.train_sq = self.train.double().pow(2).sum(1)                # (N,)

    def __len__(self) -> int:
        return len(self.train)

    def subset(self, n: int, seed: int) -> EmpiricalPosterior:
        """The posterior over a fixed random subset of n training images (all of them when n >= N or n == 0)."""
        if n <= 0 or n >= len(self):
            return self
        idx = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:n]
        return EmpiricalPosterior(self.train[idx], self.labels[idx], self.num_clusters, self.chunk)

    def halves(self, seed: int) -> tuple[EmpiricalPosterior, EmpiricalPosterior]:
        """Two posteriors over disjoint random halves of the training set (split-half identifiability)."""
        idx = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))
        a, b = idx[: len(self) // 2], idx[len(self) // 2:]
        return (EmpiricalPosterior(self.train[a], self.labels[a], self.num_clusters, self.chunk),
                EmpiricalPosterior(self.train[b], self.labels[b], self.num_clusters, self.chunk))

    @torch.no_grad()
    def __call__(self, x_t: torch.Tensor, t: torch.Tensor) -> PosteriorResult:
        """x_t: (B, C, H, W) or (B, D) states; t: (B,) or scalar flow time in [0, 1]."""
        x = x_t.flatten(1).double().to(self.train.device)                # (B, D)
        t = torch.as_tensor(t, dtype=torch.float64).expand(len(x)).to(x.device).clamp(T_MIN, 1.0)
        a = 1.0 - t                                                      # (B,) mean scale of x_t given x_i
        x_sq = x.pow(2).sum(1)                                           # (B,)
        k = self.num_clusters
        lse_k = torch.full((len(x), k), -torch.inf, dtype=torch.float64, device=x.device)  # log sum_{i in k} N
        lse2 = torch.full((len(x),), -torch.inf, dtype=torch.float64, device=x.device)     # log sum_i N^2
        for s in range(0, len(self), self.chunk):
            y = self.train[s:s + self.chunk].double()                    # (n, D)
            # ||x - a y||^2 = ||x||^2 - 2 a x.y + a^2 ||y||^2, then log N up to a constant shared by every i
            d2 = (x_sq[:, None] - 2 * a[:, None] * (x @ y.T)
                  + a[:, None] ** 2 * self.train_sq[s:s + self.chunk][None]).clamp_min(0)   # (B, n)
            log_w = -d2 / (2 * t[:, None] ** 2)                           # (B, n)
            m = log_w.max(1, keepdim=True).values                        # (B, 1)
            e = (log_w - m).exp()                                        # (B, n) in (0, 1]
            onehot = torch.nn.functional.one_hot(self.labels[s:s + self.chunk].to(x.device), k).double()  # (n, K)
            part = (e @ onehot).log() + m                                # (B, K); -inf for absent clusters
            lse_k = torch.logaddexp(lse_k, part)
            lse2 = torch.logaddexp(lse2, e.pow(2).sum(1).log() + 2 * m[:, 0])
        lse = torch.logsumexp(lse_k, dim=1)                              # (B,) log sum_i N
        return PosteriorResult(lse_k - lse[:, None], (2 * lse - lse2).exp())


class PosteriorRouter:
    """p* as a router: (x (B, C, H, W), t (B,)) -> log p*(k | x) (B, K), float32, with the trained router's
    interface, so a ``RoutedField`` whose softmax of the output is p* routes by the exact posterior.

    Log-probabilities below float64's range (-inf) are clamped to -1e4 (weight exactly 0 after the softmax)."""

    def __init__(self, posterior: EmpiricalPosterior, image_shape: tuple[int, int, int]) -> None:
        self.posterior = posterior
        self.image_shape = tuple(image_shape)
        self.num_experts = posterior.num_clusters
        self.evals = 0            # states routed
        self.distance_evals = 0   # state x training image distances computed (the cost)

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.evals += len(x)
        self.distance_evals += len(x) * len(self.posterior)
        return self.posterior(x, t).log_p.clamp_min(-1e4).float().to(x.device)


def total_variation(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """(B, K), (B, K) log-probabilities -> (B,) total variation 0.5 sum_k |p_k - q_k| in [0, 1]."""
    return 0.5 * (log_p.double().exp() - log_q.double().exp()).abs().sum(1)


def kl_divergence(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """(B, K), (B, K) log-probabilities -> (B,) KL(p || q) in nats (terms with p_k = 0 contribute 0)."""
    p = log_p.double().exp()
    return torch.where(p > 0, p * (log_p.double() - log_q.double()), torch.zeros_like(p)).sum(1)


def compare_by_t(log_p: torch.Tensor, log_q: torch.Tensor, t: torch.Tensor) -> list[dict[str, Any]]:
    """Two posteriors at the same states, (B, K) each, grouped by the states' t (B,): per t the mean total
    variation and how often their argmax agrees."""
    tv = total_variation(log_p, log_q)
    agree = (log_p.argmax(1) == log_q.argmax(1)).double()
    rows = []
    for t_val in torch.unique(t):
        sel = t == t_val
        rows.append({"t": float(t_val), "tv": float(tv[sel].mean()), "argmax_agreement": float(agree[sel].mean()),
                     "n": int(sel.sum())})
    return rows
