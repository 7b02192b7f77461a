"""Router calibration: does the router's p(k | x_t) mean what it says?

Scores of router logits (N, K) against cluster labels (N,):
- accuracy of the argmax;
- NLL, the mean -log p_y (nats);
- Brier score, the multi-class form mean_n sum_k (p_k - 1[y = k])^2 (0 perfect, 2 worst);
- ECE, top-label expected calibration error with 15 equal-width confidence bins over [0, 1] (Guo et al. 2017,
  "On calibration of modern neural networks", eq. 3): sum_b |B_b| / N * |acc(B_b) - conf(B_b)|, computed by
  torchmetrics' ``multiclass_calibration_error`` (norm l1);
- the reliability diagram's bins (count, accuracy, mean confidence), the same binning except that a confidence of
  exactly 1 joins the last bin.
Temperature scaling (Guo et al. 2017, section 4.2) fits one scalar T > 0 on held-out logits by minimising the NLL
of softmax(logits / T) (scipy's bounded scalar minimiser over log T).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from scipy.optimize import minimize_scalar
from torchmetrics.functional.classification import multiclass_calibration_error

N_BINS = 15
LOG_T_BOUNDS = (math.log(1e-2), math.log(1e2))  # T between 0.01 and 100


def _check(logits: torch.Tensor, labels: torch.Tensor) -> None:
    if logits.dim() != 2 or len(logits) != len(labels) or len(labels) == 0:
        raise ValueError(f"need logits (N, K) and labels (N,) with N > 0, got {tuple(logits.shape)} and "
                         f"{tuple(labels.shape)}")
    if int(labels.min()) < 0 or int(labels.max()) >= logits.shape[1]:
        raise ValueError(f"labels must lie in [0, {logits.shape[1]}), got [{int(labels.min())}, {int(labels.max())}]")


def reliability_bins(confidence: torch.Tensor, correct: torch.Tensor, n_bins: int = N_BINS) -> list[dict[str, Any]]:
    """confidence (N,) top-label probability, correct (N,) bool -> one dict per equal-width bin of [0, 1]:
    lo, hi, count, accuracy and confidence (None for an empty bin)."""
    idx = (confidence.double() * n_bins).floor().long().clamp(0, n_bins - 1)      # (N,)
    count = torch.bincount(idx, minlength=n_bins)
    acc = torch.bincount(idx, weights=correct.double(), minlength=n_bins)
    conf = torch.bincount(idx, weights=confidence.double(), minlength=n_bins)
    return [{"lo": b / n_bins, "hi": (b + 1) / n_bins, "count": int(count[b]),
             "accuracy": float(acc[b] / count[b]) if count[b] else None,
             "confidence": float(conf[b] / count[b]) if count[b] else None} for b in range(n_bins)]


def calibration(logits: torch.Tensor, labels: torch.Tensor, n_bins: int = N_BINS) -> dict[str, Any]:
    """logits (N, K) (or log-probabilities), labels (N,) long -> accuracy, nll, brier, ece and the reliability
    bins (see the module docstring for each definition)."""
    _check(logits, labels)
    labels = labels.long()
    log_p = torch.log_softmax(logits.double(), dim=1)                              # (N, K)
    p = log_p.exp()
    confidence, top = p.max(1)
    correct = top == labels
    onehot = torch.nn.functional.one_hot(labels, logits.shape[1]).double()
    ece = multiclass_calibration_error(p, labels, num_classes=logits.shape[1], n_bins=n_bins, norm="l1")
    return {"n": len(labels), "accuracy": float(correct.double().mean()),
            "nll": float(-log_p.gather(1, labels[:, None]).mean()),
            "brier": float((p - onehot).pow(2).sum(1).mean()),
            "ece": float(ece), "reliability": reliability_bins(confidence, correct, n_bins)}


def temperature_nll(logits: torch.Tensor, labels: torch.Tensor, temperature: float) -> float:
    """Mean NLL (nats) of softmax(logits / T) on labels."""
    log_p = torch.log_softmax(logits.double() / temperature, dim=1)
    return float(-log_p.gather(1, labels.long()[:, None]).mean())


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The T in [0.01, 100] minimising the NLL of softmax(logits / T) on held-out logits (N, K), labels (N,)."""
    _check(logits, labels)
    res = minimize_scalar(lambda log_t: temperature_nll(logits, labels, math.exp(log_t)), bounds=LOG_T_BOUNDS,
                          method="bounded", options={"xatol": 1e-5})
    return float(math.exp(res.x))
