"""Float noise: how far two computations of the same number may differ and still be the same number.

A change of CPU vector ISA or of intra-op thread count splits floating-point sums differently. Measured on the
tiny synthetic pipeline (same seed, 1 vs 2 threads, training included), no number moved by more than 4.3e-4
of its scale; ``DRIFT_REL`` is about 5x that. The regression gate's determinism check allows this much
(``|Δ| ≤ DRIFT_ABS + DRIFT_REL · scale``), and a paired difference no larger than it is a tie, not a sign.
"""

from __future__ import annotations

import numpy as np

DRIFT_REL = 2e-3
DRIFT_ABS = 1e-9


def tie_tolerance(a: np.ndarray | float, b: np.ndarray | float, rel: float = DRIFT_REL) -> np.ndarray:
    """Elementwise ``DRIFT_ABS + rel · max(|a|, |b|)``: the largest |a − b| that float drift alone explains."""
    return DRIFT_ABS + rel * np.maximum(np.abs(np.asarray(a, dtype=np.float64)), np.abs(np.asarray(b, dtype=np.float64)))


def without_ties(d: np.ndarray, tolerance: np.ndarray | float) -> np.ndarray:
    """``d`` with every entry no larger in magnitude than its tolerance set to exactly 0 (a tie)."""
    d = np.asarray(d, dtype=np.float64)
    return np.where(np.abs(d) <= tolerance, 0.0, d)
