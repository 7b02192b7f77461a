"""The regression gate: (a) determinism of a same-seed run, (b) the headline paired contrasts.

CI runs one profile at one seed, so its noise model is not seed-to-seed spread but float drift:

(a) **Determinism.** Every value of the baseline (all numbers under ``metrics/`` except timings and
    config constants) must come back bit for bit (``exact``) or within the measured float drift of a
    change of machine or thread count (``drift``): ``|Δ| ≤ DRIFT_ABS + DRIFT_REL·scale``, where scale is
    the largest |baseline| among the value and its siblings (the numbers of the same JSON object or
    list), so that an interval bound or a difference near 0 is judged on the scale of its estimate.
(b) **Scientific regression.** Every headline paired contrast of ``metrics/contrast.json``, policy − full for
    every policy in ΔFID_inf, the paired ΔKID, Δamplification per ε, Δconvergence error and ΔLipschitz (the
    record: :mod:`ddmbench.evaluation.contrast_record`), must keep the sign its baseline established and stay
    within its tolerance (:func:`contrast_tolerance`; from another float path :func:`other_path_tolerance`).
    A difference within float drift of the compared values is a tie and guards no sign.

Config constants (n, steps, counts: functions of the params alone) are compared apart and reported as
"constants": a changed constant means a changed profile, not a changed result, and is not a gated metric.
Timings measure the machine and are never compared. ``compare`` ends in one verdict: ``exact`` / ``drift``
(exit 0), ``other-machine`` / ``stale-baseline`` ((b) alone, exit 0 when every contrast holds) or
``regression`` (exit 1: a gated value beyond drift or missing, or a contrast failing).

**Float paths.** A baseline records the machine it was made on. Another CPU vendor, vector ISA or intra-op thread
count runs other kernels and sums, so the same seed trains slightly different models and every later number
drifts beyond (a) (:mod:`ddmbench.tools.float_paths`). ``compare`` judges (a) against the baseline made on this
path; when none was, it judges (b) alone (verdict ``other-machine``) at the tolerances measured across training
seeds and float paths (``ddmbench spread``). On the same path another evaluator digest is refused in one line.

**Output versions.** Outputs change on purpose (a new estimator, a fixed bug). Every such change bumps
:data:`OUTPUT_VERSION`, and a baseline records the version it was made at. A baseline of another version
gates its contrasts alone, as from another float path (verdict ``stale-baseline``), until it is refreshed.
"""

from __future__ import annotations

import fnmatch
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ddmbench.errors import ArtifactError
from ddmbench.evaluation import contrast_record
from ddmbench.evaluation.contrast_record import Difference
from ddmbench.evaluation.float_noise import DRIFT_ABS, DRIFT_REL
from ddmbench.evaluation.identity import check_same_evaluator
from ddmbench.hardware import machine_fingerprint
from ddmbench.tools.float_paths import path_of, same_path, this_path

FORMAT = 2
REFERENCE = "full"

# The version of the pipeline's outputs. Bump it with every deliberate change of any number under metrics/.
#   1: ties at float noise in the per-seed contrasts (frac_lower, Wilcoxon p, median) and their tie_tolerance.
OUTPUT_VERSION = 1

# Timings, and counters of how a run was executed rather than what it computed: never compared.
TIMINGS = ("*wall_time_s", "*images_per_s", "*_seconds", "*:train_*", "*:resumed_from_step", "*:world_size")

# Functions of the params alone: compared exactly, reported as constants, not counted as gated metrics.
CONSTANTS = (
    "sample/*:nfe_per_sample", "sample/*:nfe_steps", "sample/*:n", "*:cost.nfe_per_sample",
    "evaluate/*:n_*", "evaluate/*:bootstrap", "evaluate/*:pr_k", "evaluate/*:pr_n_real", "*:class_entropy_max",
    "analyze/*:n", "analyze/*:convergence.steps.*", "analyze/*:convergence.reference_steps", "analyze/*:lipschitz.delta",
    "analyze/*:disagreement.by_quantile.*.quantile",
    "expert_accuracy.json:n", "expert_accuracy.json:seed", "expert_accuracy.json:t.*", "expert_accuracy.json:rows.*.t",
    "contrast.json:*.n", "contrast.json:*.bootstrap", "contrast.json:*.level", "contrast.json:*.jackknife_groups",
    "*:expert_gflops_per_eval", "*:expert_gflops_per_eval_by_expert.*", "*:router_gflops_per_eval",
    "*:steps", "*:params", "*:k", "*:pca_dim", "*:num_features", "*:seed",
)

SPREAD_MULTIPLE = 2.0   # tolerances of contrasts from `ddmbench spread`: this many ranges


def flatten_metrics(metrics_dir: Path) -> dict[str, float]:
    """Every finite number in every JSON file under ``metrics_dir`` as {"<file>:<dotted.key>": value}."""
    metrics_dir = Path(metrics_dir)
    if not metrics_dir.is_dir():
        raise ArtifactError(f"{metrics_dir} is not a metrics folder; run `dvc repro` first or pass the right path")
    out: dict[str, float] = {}
    for path in sorted(metrics_dir.rglob("*.json")):
        _walk(_read(path), f"{path.relative_to(metrics_dir).as_posix()}:", out)
    return out


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{path} is not valid JSON ({exc.msg}); re-run the stage that writes it") from exc


def _walk(node: Any, prefix: str, out: dict[str, float]) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            _walk(value, f"{prefix}{key}.", out)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            _walk(value, f"{prefix}{i}.", out)
    elif isinstance(node, (int, float)) and not isinstance(node, bool) and math.isfinite(float(node)):
        out[prefix.rstrip(".")] = float(node)


def sibling_scales(values: dict[str, float]) -> dict[str, float]:
    """{name: the scale its drift is judged on}: the largest |value| among ``name`` and its siblings, the
    estimates of the same nested JSON object (list items join the object holding the list), e.g.
    ``contrast.json:contrasts.top-1.fid.ci95.0`` with ``...fid.estimate`` and ``...fid.ci95.1``. ``values`` are
    the gated values only (constants such as a contrast's ``n`` are no estimates). A file's top-level numbers are
    unrelated quantities and keep their own |value|; p-values and fractions (``p_value``, ``*_p``, ``frac_*``)
    live on [0, 1] and neither lend nor borrow a scale."""
    def parent(name: str) -> str | None:
        head, _, last = name.rpartition(".")
        if last.isdigit() and "." in head.partition(":")[2]:
            head, _, last = head.rpartition(".")
        own = (last == "p_value" or last.endswith("_p") or last.startswith("frac_")
               or ":" not in head or not head.partition(":")[2])
        return None if own else head
    largest: dict[str, float] = {}
    for name, v in values.items():
        if (key := parent(name)) is not None:
            largest[key] = max(largest.get(key, 0.0), abs(v))
    return {name: largest[key] if (key := parent(name)) is not None else abs(v) for name, v in values.items()}


def kind_of(metric: str) -> str:
    """``timing`` (never compared), ``constant`` (a function of params) or ``value`` (checked for determinism)."""
    if any(fnmatch.fnmatchcase(metric, g) for g in TIMINGS):
        return "timing"
    if any(fnmatch.fnmatchcase(metric, g) for g in CONSTANTS):
        return "constant"
    return "value"


def headline_contrasts(metrics_dir: Path) -> dict[str, Difference]:
    """{"<policy> − full: <family>": Difference} from ``metrics/contrast.json`` (:mod:`ddmbench.evaluation.contrast_record`):
    ΔFID_inf, the paired ΔKID, Δamplification per ε, Δconvergence error and ΔLipschitz for every policy. No file,
    no contrasts; a file that does not match the record is a one-line ArtifactError."""
    path = Path(metrics_dir) / "contrast.json"
    return contrast_record.headline(contrast_record.validate(_read(path), path)) if path.exists() else {}


def contrast_tolerance(d: Difference, spread_range: float | None = None,
                       drift_rel: float = DRIFT_REL) -> tuple[float, int]:
    """(tolerance, guarded sign) of a baseline contrast on its own float path.

    The tolerance is SPREAD_MULTIPLE x its measured run-to-run range when one is given, else the half-width
    of its baseline interval (the sampling noise given the trained models), and never below the float drift
    (``drift_rel`` x the largest of |estimate| and |bounds|, and the difference's own tie tolerance). When the
    interval excludes 0 by more than the tie tolerance the sign is guarded (+1 or -1) and the tolerance is
    capped at |effect|, so no tolerance exceeds the effect it guards; otherwise the sign is 0.
    """
    low, high = d.ci95
    tol = SPREAD_MULTIPLE * spread_range if spread_range is not None else (high - low) / 2
    tol = max(tol, drift_rel * max(abs(d.estimate), abs(low), abs(high)), d.tie_tolerance)
    sign = d.sign
    if sign:
        tol = min(tol, abs(d.estimate))
    return max(tol, 0.0), sign


def other_path_tolerance(d: Difference, spread: dict[str, Any] | None,
                         drift_rel: float = DRIFT_REL) -> tuple[float, int, str]:
    """(tolerance, guarded sign, basis) of a contrast judged from another float path (other trained models). With
    a spread (its values over training seeds and float paths): SPREAD_MULTIPLE x its range, never below the
    interval's half-width; the sign guarded only where the interval guards it and every run of the spread has
    it beyond the tie tolerance. Without one: the same-path rule, basis 'ci95'."""
    if spread is None:
        return (*contrast_tolerance(d, None, drift_rel), "ci95")
    low, high = d.ci95
    tol = max(SPREAD_MULTIPLE * float(spread["range"]), (high - low) / 2, drift_rel * abs(d.estimate), d.tie_tolerance)
    held = d.sign and all(v * d.sign > d.tie_tolerance for v in spread["values"])
    sign = d.sign if held else 0
    if sign:
        tol = min(tol, abs(d.estimate))
    return tol, sign, "spread"


def evaluator_digest(metrics_dir: Path) -> str | None:
    """The one evaluator (SHA-256 of its weights) every metrics file that names one was measured with; None
    when no file names one. Two different digests in one run: one-line ArtifactError naming both."""
    named = {}
    for path in sorted(metrics_dir.rglob("*.json")):
        doc = _read(path)
        if isinstance(doc, dict) and doc.get("evaluator_sha256"):
            named[str(path)] = doc["evaluator_sha256"]
    return check_same_evaluator(named) if named else None


def make_baseline(metrics_dir: Path, *, why: str, git_commit: str, profile: str,
                  spread: dict[str, Any] | None = None, drift_rel: float = DRIFT_REL) -> dict[str, Any]:
    """The baseline document: the code's output version, the run's values and constants, and its headline
    contrasts, each with two tolerances and guarded signs. On the same float path the models are the same, so a
    contrast may move by its sampling noise (:func:`contrast_tolerance`, the 95% half-width); from another path
    (``other_path``) the models differ, so by the spread over training seeds and float paths
    (:func:`other_path_tolerance`). ``spread``: a `ddmbench spread` document (contrasts named ``contrast <name>``);
    ``drift_rel``: the float drift (a) allows, of the scale."""
    flat = flatten_metrics(metrics_dir)
    measured = {name: m for name, m in (spread or {}).get("metrics", {}).items() if m.get("kind") == "contrast"}
    contrasts = {}
    for name, d in headline_contrasts(metrics_dir).items():
        tol, sign = contrast_tolerance(d, None, drift_rel)
        other_tol, other_sign, basis = other_path_tolerance(d, measured.get(f"contrast {name}"), drift_rel)
        contrasts[name] = {"value": d.estimate, "ci95": list(d.ci95), "tie_tolerance": d.tie_tolerance,
                           "tolerance": tol, "sign": sign, "basis": "ci95",
                           "other_path": {"tolerance": other_tol, "sign": other_sign, "basis": basis}}
    return {"format": FORMAT, "output_version": OUTPUT_VERSION, "why": why, "git_commit": git_commit,
            "profile": profile, "machine": machine_fingerprint(), "evaluator_sha256": evaluator_digest(metrics_dir),
            "drift": {"abs": DRIFT_ABS, "rel": drift_rel},
            "spread_runs": (spread or {}).get("runs"),
            "values": {k: v for k, v in sorted(flat.items()) if kind_of(k) == "value"},
            "constants": {k: v for k, v in sorted(flat.items()) if kind_of(k) == "constant"},
            "contrasts": contrasts}


def output_version(doc: dict[str, Any]) -> int:
    return int(doc.get("output_version", 0))   # 0: made before baselines recorded one


def missing_families(doc: dict[str, Any]) -> list[str]:
    """"<policy>: <family>" for every headline family a baseline's contrasts lack, over the policies it names."""
    policies = {name.partition(" − ")[0] for name in doc["contrasts"]}
    have = {(name.partition(" − ")[0], name.partition(": ")[2].split(" ")[0]) for name in doc["contrasts"]}
    return [f"{p}: {f}" for p in sorted(policies) for f in contrast_record.FAMILIES if (p, f) not in have]


def check_baseline(doc: Any, path: Path | str) -> dict[str, Any]:
    """``doc`` if it is a format-2 baseline; else a one-line ArtifactError saying how to regenerate it. A baseline
    at the code's output version must hold every headline family for every policy it names."""
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        old = isinstance(doc, dict) and "metrics" in doc and "format" not in doc
        raise ArtifactError(f"{path} is {'an old-format baseline (per-metric tolerances)' if old else 'not a baseline'}"
                            f"; `compare` needs format {FORMAT}: regenerate it with `ddmbench baseline --why '...'` "
                            "on a run of this code")
    try:
        for section in ("values", "constants", "contrasts"):
            if not isinstance(doc[section], dict):
                raise TypeError(section)
        for name, e in doc["contrasts"].items():
            float(e["value"]), float(e["tolerance"]), int(e["sign"])
            if "other_path" in e:
                float(e["other_path"]["tolerance"]), int(e["other_path"]["sign"])
        for section in ("values", "constants"):
            for v in doc[section].values():
                float(v)
        output_version(doc)
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(f"{path} is a malformed baseline ({exc!r}); regenerate it with "
                            "`ddmbench baseline --why '...'`") from exc
    if output_version(doc) == OUTPUT_VERSION and (lacking := missing_families(doc)):
        raise ArtifactError(f"{path} gates no {lacking[0]} contrast ({len(lacking)} families missing); regenerate it "
                            "with `ddmbench baseline --why '...'` from a run whose contrast stage ran")
    return doc


@dataclass
class ContrastRow:
    name: str
    baseline: float
    current: float | None
    tolerance: float
    sign: int

    @property
    def passed(self) -> bool:
        if self.current is None:
            return False
        flipped = self.sign != 0 and (self.current * self.sign <= 0)
        return not flipped and abs(self.current - self.baseline) <= self.tolerance + 1e-12

    @property
    def why(self) -> str:
        if self.current is None:
            return "missing"
        if self.sign and self.current * self.sign <= 0:
            return "sign flipped"
        return "" if self.passed else "outside tolerance"


@dataclass
class GateResult:
    """What `compare` found. ``beyond``: value rows (name, baseline, current or None) outside the drift;
    ``other_machine`` / ``stale``: why values were not gated (another float path / output version)."""

    n_values: int
    exact: int
    drifted: list[tuple[str, float, float]] = field(default_factory=list)
    beyond: list[tuple[str, float, float | None]] = field(default_factory=list)
    constants_changed: list[tuple[str, float, float | None]] = field(default_factory=list)
    n_constants: int = 0
    contrasts: list[ContrastRow] = field(default_factory=list)
    new: list[str] = field(default_factory=list)
    drift_rel: float = DRIFT_REL
    other_machine: str | None = None
    stale: str | None = None

    @property
    def values_gated(self) -> bool:
        return not (self.other_machine or self.stale)

    @property
    def failed_contrasts(self) -> list[ContrastRow]:
        return [r for r in self.contrasts if not r.passed]

    @property
    def missing(self) -> list[str]:
        return [name for name, _, cur in self.beyond if cur is None]

    @property
    def verdict(self) -> str:
        if self.failed_contrasts or (self.beyond and self.values_gated) or (self.missing and not self.stale):
            return "regression"
        if self.stale:
            return "stale-baseline"
        if self.other_machine:
            return "other-machine"
        return "drift" if self.drifted else "exact"

    def summary(self) -> str:
        """The one summary line: verdict, then what (a) and (b) found."""
        held = len(self.contrasts) - len(self.failed_contrasts)
        families = sorted({r.name.partition(": ")[2].split(" ")[0] for r in self.contrasts})
        science = (f"{held} of {len(self.contrasts)} headline contrasts hold" +
                   (f" ({', '.join(families)}; {'cross-path' if not self.values_gated else 'same-path'} tolerances)"
                    if self.contrasts else ""))
        if self.failed_contrasts:
            science += "; failing: " + ", ".join(f"{r.name} {r.why}" for r in self.failed_contrasts[:3]) + \
                       (", …" if len(self.failed_contrasts) > 3 else "")
        constants = (f"; {len(self.constants_changed)} of {self.n_constants} config constants differ "
                     "(another profile?)" if self.constants_changed else "")
        if not self.values_gated:
            why = self.stale or f"baseline from another float path: {self.other_machine}"
            values = (f"{self.exact + len(self.drifted)} of {self.n_values} values within float drift, not gated "
                      f"({why})" + (f", {len(self.missing)} missing" if self.missing else ""))
            return f"{self.verdict}: {values}; {science}{constants}"
        if self.verdict == "exact":
            return f"exact: all {self.n_values} values reproduce bit for bit; {science}{constants}"
        if self.verdict == "drift":
            return (f"drift: {len(self.drifted)} of {self.n_values} values differ, all within float drift "
                    f"(|Δ| ≤ {self.drift_rel:g} of the value's scale); {science}{constants}")
        values = (f"{len(self.beyond)} of {self.n_values} values beyond float drift (outputs changed: if on "
                  "purpose, bump regression.OUTPUT_VERSION and refresh the baseline with `ddmbench baseline --why`)"
                  if self.beyond else "every value within float drift")
        return f"regression: {values}; {science}{constants}"


def compare(metrics_dir: Path, baseline: dict[str, Any], isa: str | None = None,
            threads: int | None = None, vendor: str | None = None) -> GateResult:
    """Check a run's metrics folder, made on this machine (CPU ``vendor``, vector ISA ``isa`` and ``threads``
    intra-op threads, default this process's), against a format-2 baseline (:func:`check_baseline` first).

    Made on the same float path at the code's output version, its values must reproduce (a) and its contrasts
    hold their same-path tolerances (b); another evaluator digest there is another evaluator, whose FID/KID live
    in another feature space: one-line ArtifactError naming both digests. Made on another float path, or at
    another output version (outputs changed on purpose since), only (b) is gated, at the tolerances and signs the
    baseline holds for another path (``other_path``: from the spread over training seeds and float paths)."""
    here = this_path(isa, threads, vendor)
    other = not same_path(baseline, here)
    made_at = output_version(baseline)
    stale = (f"baseline at output version {made_at}, this code's is {OUTPUT_VERSION}: outputs changed on purpose "
             "since; refresh it with `ddmbench baseline --why`") if made_at != OUTPUT_VERSION else None
    digest, base_digest = evaluator_digest(metrics_dir), baseline.get("evaluator_sha256")
    if digest and base_digest and digest != base_digest and not other and not stale:
        raise ArtifactError(f"{metrics_dir} was measured with evaluator {digest[:12]}… but the baseline with "
                            f"{base_digest[:12]}…; FID/KID of two evaluators live in different feature spaces: "
                            "fix evaluator.seed/net/steps to the baseline's, or regenerate the baseline")
    made_on = path_of(baseline)
    where = (f"{made_on.text()}, this machine {here.text()}" +
             (f"; OMP_NUM_THREADS={made_on.threads} checks determinism against it"
              if made_on.threads and made_on.threads != here.threads
              and made_on.matches(here, ("vendor", "isa"))
              else ""))
    flat = flatten_metrics(metrics_dir)
    drift = baseline.get("drift") or {"abs": DRIFT_ABS, "rel": DRIFT_REL}
    # classify by today's rules, so a number reclassified since the baseline was made is judged as what it is
    both = {**baseline["values"], **baseline["constants"]}
    values = {k: float(v) for k, v in both.items() if kind_of(k) == "value"}
    constants = {k: float(v) for k, v in both.items() if kind_of(k) == "constant"}
    result = GateResult(n_values=len(values), exact=0, n_constants=len(constants), drift_rel=float(drift["rel"]),
                        other_machine=where if other else None, stale=stale)
    scales = sibling_scales(values)
    for name, base in sorted(values.items()):
        cur = flat.get(name)
        if cur is not None and cur == float(base):
            result.exact += 1
        elif cur is not None and abs(cur - float(base)) <= float(drift["abs"]) + float(drift["rel"]) * scales[name]:
            result.drifted.append((name, float(base), cur))
        else:
            result.beyond.append((name, float(base), cur))
    for name, base in sorted(constants.items()):
        if flat.get(name) != float(base):
            result.constants_changed.append((name, float(base), flat.get(name)))
    current = headline_contrasts(metrics_dir)
    for name, e in sorted(baseline["contrasts"].items()):
        rule = e.get("other_path", e) if not result.values_gated else e
        c = current.get(name)
        result.contrasts.append(ContrastRow(name, float(e["value"]), None if c is None else c.estimate,
                                            float(rule["tolerance"]), int(rule["sign"])))
    known = set(both)
    result.new = sorted(n for n in flat if kind_of(n) != "timing" and n not in known)
    return result
