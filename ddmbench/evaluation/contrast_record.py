"""The contrast record: what ``metrics/contrast.json`` holds, one spelling for the stage that writes it and the
regression gate that reads it.

Every policy − reference difference is a :class:`Difference`; each policy holds the five headline families
(:data:`FAMILIES`): ΔFID_inf and the paired ΔKID (set statistics, jackknife over groups of seeds), Δamplification
per ε, Δconvergence error and ΔLipschitz (per-seed means, paired over the traced seeds). A headline contrast is
named ``"<policy> − <reference>: <family>"``, amplification as ``"amplification eps_<e>"`` (:func:`headline`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from ddmbench.errors import ArtifactError

FAMILIES = ("fid", "kid", "amplification", "convergence_error", "lipschitz")


class Difference(BaseModel):
    """One paired difference a − b: point estimate, its 95% interval and what the interval covers, a two-sided
    p-value, the verdict ('lower' / 'higher' when the interval excludes 0, else 'not separable'), the rows or
    seeds paired, and the float drift allowance of the compared values (a difference no larger is a tie).
    Statistics particular to one kind of difference (jackknife groups, Wilcoxon p, ...) ride along as extras."""

    model_config = ConfigDict(extra="allow", frozen=True)

    estimate: float
    ci95: tuple[float, float]
    estimand: str
    p_value: float
    verdict: str
    n: int
    tie_tolerance: float = 0.0

    @property
    def sign(self) -> int:
        """+1 / −1 where the interval excludes 0 by more than the tie tolerance, else 0: the sign a gate may guard."""
        low, high = self.ci95
        return 1 if low > self.tie_tolerance else -1 if high < -self.tie_tolerance else 0


class PolicyContrast(BaseModel):
    """A policy against the reference in every headline family."""

    model_config = ConfigDict(extra="allow", frozen=True)

    fid: Difference
    kid: Difference
    amplification: dict[str, Difference]
    convergence_error: Difference
    lipschitz: Difference

    def families(self) -> dict[str, Difference]:
        """{family name: difference}, amplification spelled ``"amplification eps_<e>"`` per ε."""
        return {"fid": self.fid, "kid": self.kid,
                **{f"amplification {eps}": d for eps, d in sorted(self.amplification.items())},
                "convergence_error": self.convergence_error, "lipschitz": self.lipschitz}


class ContrastFile(BaseModel):
    """``metrics/contrast.json``: reference (None where the profile has no ``full``), the difference's direction,
    the evaluator digest both quality families were measured with, one :class:`PolicyContrast` per policy."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    reference: str | None
    delta: str
    evaluator_sha256: str | None = None
    contrasts: dict[str, PolicyContrast]
    note: str | None = None


def headline_name(policy: str, family: str, reference: str) -> str:
    return f"{policy} − {reference}: {family}"


def headline(doc: ContrastFile) -> dict[str, Difference]:
    """{"<policy> − <reference>: <family>": Difference} for every policy and headline family."""
    if doc.reference is None:
        return {}
    return {headline_name(policy, family, doc.reference): d
            for policy, c in sorted(doc.contrasts.items()) for family, d in c.families().items()}


def validate(doc: dict[str, Any], path: Path | str) -> ContrastFile:
    """``doc`` as a :class:`ContrastFile`, or a one-line ArtifactError naming the first bad key."""
    try:
        return ContrastFile.model_validate(doc)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise ArtifactError(f"{path}: {where}: {err['msg']}; re-run `ddmbench contrast` with this code") from None
