"""Per-step routing traces: what the router said, which experts were used, and (for a probe subset)
what every expert predicted. Off by default; when on, memory grows with N x steps x K for the routing
record and with the probe size for the states and predictions."""

from __future__ import annotations

from typing import Any

import torch


class TraceRecorder:
    """Collects ``RoutedField.on_step`` records batch by batch; ``result()`` stacks them per sample.

    Result (S = field evaluations per trajectory, M = probe samples):
      t: (S,) times; p, w: (N, S, K) router probabilities and expert weights;
      probe_index: (M,) sample indices; probe_x, probe_v: (M, S, C, H, W) states and combined velocities;
      probe_v_experts: (M, S, K, C, H, W) every expert's velocity at the probe states.
    """

    def __init__(self) -> None:
        self._batches: list[dict[str, list[Any]]] = []
        self._offset = 0
        self._t: list[float] = []

    def begin_batch(self, size: int) -> None:
        self._batches.append({"p": [], "w": [], "probe": None, "x": [], "v": [], "v_experts": [],
                              "offset": self._offset})
        self._offset += size

    def __call__(self, record: dict[str, Any]) -> None:
        b = self._batches[-1]
        if len(self._batches) == 1:
            self._t.append(float(record["t"][0]))
        b["p"].append(record["p"].detach().cpu())
        b["w"].append(record["w"].detach().cpu())
        if "probe" in record:
            rows = record["probe"]
            b["probe"] = rows.cpu()
            b["x"].append(record["x"][rows].cpu())
            b["v"].append(record["v"][rows].cpu())
            b["v_experts"].append(record["v_experts"].transpose(0, 1).cpu())  # (R, K, C, H, W)

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
