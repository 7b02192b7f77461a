"""Per-step routing traces: what the router said, which experts were used, and (for a probe subset)
what every expert predicted. Off by default; when on, memory grows with N x steps x K for the routing
record and with the probe size for the states and predictions."""

from __future__ import annotations

from typing import Any

import torch

from ddmbench.sampling.field import RoutedField, Routing


class TraceRecorder:
    """An observer of a routed field's evaluations (``generate(..., observers=[recorder])``).

    ``probe_n``: the first probe_n samples (in seed order) also get their states, combined velocities and
    every expert's prediction recorded; those extra evaluations are counted in ``probe_evals``, not in the cost.

    ``result()`` (S = field evaluations per trajectory, M = probe samples):
      t: (S,) times; p, w: (N, S, K) router probabilities and expert weights;
      probe_index: (M,) sample indices; probe_x, probe_v: (M, S, C, H, W) states and combined velocities;
      probe_v_experts: (M, S, K, C, H, W) every expert's velocity at the probe states.
    """

    def __init__(self, field: RoutedField | None = None, probe_n: int = 0) -> None:
        if probe_n > 0 and field is None:
            raise ValueError("recording every expert's prediction (probe_n > 0) needs the routed field")
        self.field, self.probe_n = field, probe_n
        self.probe_evals = 0
        self._batches: list[dict[str, Any]] = []
        self._offset = 0
        self._t: list[float] = []

    def start(self, rows: int) -> None:
        n_probe = max(0, min(self.probe_n - self._offset, rows))
        self._batches.append({"p": [], "w": [], "x": [], "v": [], "v_experts": [], "offset": self._offset,
                              "probe": torch.arange(n_probe) if n_probe else None})
        self._offset += rows

    def __call__(self, r: Routing) -> None:
        b = self._batches[-1]
        if len(self._batches) == 1:
            self._t.append(float(r.t[0]))
        b["p"].append(r.p.detach().cpu())
        b["w"].append(r.w.detach().cpu())
        if b["probe"] is not None and self.field is not None:
            rows = b["probe"].to(r.x.device)
            b["x"].append(r.x[rows].cpu())
            b["v"].append(r.v[rows].cpu())
            b["v_experts"].append(self.field.expert_predictions(r.x[rows], r.t[rows]).transpose(0, 1).cpu())
            self.probe_evals += self.field.num_experts * rows.numel()

    def result(self) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {
            "t": torch.tensor(self._t),
            "p": torch.cat([torch.stack(b["p"], dim=1) for b in self._batches]),   # (N, S, K)
            "w": torch.cat([torch.stack(b["w"], dim=1) for b in self._batches]),
        }
        probed = [b for b in self._batches if b["probe"] is not None]
        if probed:
            out["probe_index"] = torch.cat([b["probe"] + b["offset"] for b in probed])
            out["probe_x"] = torch.cat([torch.stack(b["x"], dim=1) for b in probed])
            out["probe_v"] = torch.cat([torch.stack(b["v"], dim=1) for b in probed])
            out["probe_v_experts"] = torch.cat([torch.stack(b["v_experts"], dim=1) for b in probed])
        return out
