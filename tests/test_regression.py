"""`ddmbench compare` / `baseline` / `spread` on the pipeline's own files: a tiny run's metrics/ (sample, evaluate,
analyze and contrast stages) and the baseline `ddmbench baseline` wrote from it (conftest ``gate_run``). Every
headline family is gated for every policy; determinism (exact / drift), contrasts (sign and tolerance), constants
reported apart, output versions, float paths, old baselines refused, exit codes."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import GATE_POLICIES, Project, invoke, run_cli
from typer.testing import CliRunner

from ddmbench.cli import app
from ddmbench.errors import ArtifactError
from ddmbench.evaluation import contrast_record
from ddmbench.evaluation.contrast_record import Difference
from ddmbench.io import load_tensors, save_tensors
from ddmbench.tools import float_paths, regression
from ddmbench.tools import spread as spread_tool

pytestmark = pytest.mark.slow   # the shared pipeline run (about 30 s, once per worker)


# ---------------------------------------------------------------------------------------------
# copies of the pipeline's run, and edits of its files
# ---------------------------------------------------------------------------------------------

@pytest.fixture
def run(gate_run: Project, tmp_path: Path) -> Path:
    """A private copy of the run's metrics folder."""
    return Path(shutil.copytree(gate_run.root / "metrics", tmp_path / "metrics"))


@pytest.fixture
def base(gate_run: Project) -> dict[str, Any]:
    """The baseline `ddmbench baseline` wrote from the run (a fresh copy per test)."""
    path = gate_run.root / "baseline.json"
    return regression.check_baseline(json.loads(path.read_text()), path)


def copy_run(gate_run: Project, dest: Path) -> Path:
    return Path(shutil.copytree(gate_run.root / "metrics", dest))


def edit(path: Path, change: Callable[[dict], None]) -> None:
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


def scale_values(metrics: Path, factor: float) -> None:
    """Every number the gate calls a value (not a constant, not a timing) times ``factor``, in every file."""
    def walk(node: Any, prefix: str) -> Any:
        if isinstance(node, dict):
            return {k: walk(v, f"{prefix}{k}.") for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v, f"{prefix}{i}.") for i, v in enumerate(node)]
        if isinstance(node, float) and regression.kind_of(prefix.rstrip(".")) == "value":
            return node * factor
        return node
    for path in metrics.rglob("*.json"):
        path.write_text(json.dumps(walk(json.loads(path.read_text()), f"{path.relative_to(metrics).as_posix()}:")))


def set_contrast(metrics: Path, policy: str, family: str, estimate: float, half: float) -> None:
    """Move one difference of contrast.json (``family`` as in contrast.json: fid, kid, lipschitz, ...)."""
    def change(doc: dict) -> None:
        doc["contrasts"][policy][family].update(estimate=estimate, ci95=[estimate - half, estimate + half])
    edit(metrics / "contrast.json", change)


def guarded(base: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """A contrast of the run whose sign the baseline guards (the run has several: top-1 and monolith against
    full differ in Lipschitz and convergence error by far more than their intervals)."""
    name, entry = next((n, e) for n, e in sorted(base["contrasts"].items()) if e["sign"] and "lipschitz" in n)
    return name, entry


def stamp(metrics: Path, digest: str, files: tuple[str, ...] | None = None) -> None:
    """Rewrite the evaluator digest that every (or each listed) metrics file names."""
    for path in metrics.rglob("*.json"):
        if files is None or path.relative_to(metrics).as_posix() in files:
            doc = json.loads(path.read_text())
            if isinstance(doc, dict) and doc.get("evaluator_sha256"):
                path.write_text(json.dumps({**doc, "evaluator_sha256": digest}))


# ---------------------------------------------------------------------------------------------
# what is gated
# ---------------------------------------------------------------------------------------------

def test_flatten_names_file_and_key(run: Path) -> None:
    flat = regression.flatten_metrics(run)
    evaluate = json.loads((run / "evaluate" / "full.json").read_text())
    assert flat["evaluate/full.json:fid"] == evaluate["fid"]
    assert flat["contrast.json:contrasts.top-1.lipschitz.ci95.1"] == \
        json.loads((run / "contrast.json").read_text())["contrasts"]["top-1"]["lipschitz"]["ci95"][1]
    assert "evaluate/full.json:policy" not in flat  # strings are not metrics


def test_kinds_timings_constants_values() -> None:
    assert regression.kind_of("sample/full.json:wall_time_s") == "timing"
    assert regression.kind_of("evaluate/top-1.json:cost.wall_time_s") == "timing"
    assert regression.kind_of("sample/full.json:images_per_s") == "timing"
    assert regression.kind_of("router_calibration.json:cost.posterior_seconds") == "timing"
    for constant in ("sample/full.json:n", "sample/full.json:nfe_per_sample", "evaluate/full.json:n_fake",
                     "contrast.json:contrasts.top-1.fid.n", "analyze/full.json:convergence.steps.0",
                     "experts/expert-0.json:steps"):
        assert regression.kind_of(constant) == "constant", constant
    for value in ("evaluate/full.json:fid", "contrast.json:contrasts.top-1.fid.estimate", "router.json:heldout.acc_t0",
                  "sample/full.json:expert_evals_by_expert.0", "evaluate/full.json:cost.expert_evals_per_image"):
        assert regression.kind_of(value) == "value", value


def test_every_family_is_a_headline_contrast_for_every_policy(gate_run: Project, run: Path) -> None:
    c = regression.headline_contrasts(run)
    eps = [f"eps_{e:g}" for e in gate_run.config().analysis.eps]
    families = ["fid", "kid", *(f"amplification {e}" for e in eps), "convergence_error", "lipschitz"]
    assert set(c) == {f"{p} − full: {f}" for p in GATE_POLICIES if p != "full" for f in families}
    doc = json.loads((run / "contrast.json").read_text())
    kid = doc["contrasts"]["top-1"]["kid"]                 # the paired ΔKID of contrast.json, not two marginals
    assert c["top-1 − full: kid"].estimate == kid["estimate"] and list(c["top-1 − full: kid"].ci95) == kid["ci95"]
    assert c["top-1 − full: amplification eps_1"].estimate == doc["contrasts"]["top-1"]["amplification"]["eps_1"]["estimate"]


def test_the_baseline_ddmbench_wrote_gates_every_family_and_refuses_one_without(base: dict[str, Any], tmp_path: Path) -> None:
    assert base["output_version"] == regression.OUTPUT_VERSION and regression.missing_families(base) == []
    assert {n.partition(": ")[2].split(" ")[0] for n in base["contrasts"]} == set(contrast_record.FAMILIES)
    assert all(set(e) >= {"value", "ci95", "tolerance", "sign", "other_path", "tie_tolerance"}
               for e in base["contrasts"].values())
    lacking = {**base, "contrasts": {n: e for n, e in base["contrasts"].items() if not n.endswith(": lipschitz")}}
    with pytest.raises(ArtifactError, match=r"gates no monolith: lipschitz contrast \(3 families missing\)"):
        regression.check_baseline(lacking, "ci.json")
    # a baseline of an older output version (made before every family was gated) is still read
    assert regression.check_baseline({**lacking, "output_version": 0}, "old.json")


def test_a_contrast_file_that_is_not_the_record_is_a_one_line_error(run: Path) -> None:
    edit(run / "contrast.json", lambda d: d["contrasts"]["top-1"]["fid"].pop("ci95"))
    with pytest.raises(ArtifactError, match=r"contrast.json: contrasts.top-1.fid.ci95: Field required; re-run"):
        regression.headline_contrasts(run)


def test_contrast_tolerance_never_exceeds_the_effect_it_guards() -> None:
    def d(value: float, low: float, high: float, tie: float = 0.0) -> Difference:
        return Difference(estimate=value, ci95=(low, high), estimand="e", p_value=0.5, verdict="v", n=8,
                          tie_tolerance=tie)
    assert regression.contrast_tolerance(d(-8.0, -11.0, -5.0)) == (3.0, -1)   # half-width
    assert regression.contrast_tolerance(d(1.0, 0.1, 3.9)) == (1.0, 1)        # capped at |effect|
    assert regression.contrast_tolerance(d(0.01, -0.02, 0.04)) == (pytest.approx(0.03), 0)
    assert regression.contrast_tolerance(d(-8.0, -11.0, -5.0), spread_range=0.5) == (1.0, -1)
    assert regression.contrast_tolerance(d(-8.0, -11.0, -5.0), 0.0, 1e-3) == (pytest.approx(0.011), -1)
    # an interval that excludes 0 only by float noise guards no sign
    assert regression.contrast_tolerance(d(2e-7, 1e-7, 3e-7, tie=1e-5)) == (1e-5, 0)
    rng = np.random.default_rng(0)
    for _ in range(500):
        value, half, spread_range = rng.normal(0, 5), rng.exponential(3), rng.choice([None, rng.exponential(3)])
        c = d(value, value - half, value + half)
        tol, sign = regression.contrast_tolerance(c, spread_range)
        assert tol >= 0 and (sign == 0 or tol <= abs(value))
        assert sign == (1 if c.ci95[0] > 0 else -1 if c.ci95[1] < 0 else 0)


# ---------------------------------------------------------------------------------------------
# determinism and contrasts on the same float path
# ---------------------------------------------------------------------------------------------

def test_same_run_is_exact_and_timings_are_not_compared(run: Path, base: dict[str, Any]) -> None:
    assert "evaluate/full.json:fid" in base["values"] and "sample/full.json:n" in base["constants"]
    assert not any(k.endswith("wall_time_s") for k in [*base["values"], *base["constants"]])
    edit(run / "sample" / "full.json", lambda d: d.update(wall_time_s=d["wall_time_s"] + 99.0))
    result = regression.compare(run, base)
    assert result.verdict == "exact" and result.exact == result.n_values == len(base["values"])
    n = len(base["contrasts"])
    assert result.summary().startswith(f"exact: all {result.n_values} values reproduce bit for bit; {n} of {n} headline")
    assert "amplification, convergence_error, fid, kid, lipschitz; same-path tolerances" in result.summary()


def test_float_drift_is_drift_and_more_is_regression(gate_run: Project, base: dict[str, Any], tmp_path: Path) -> None:
    drifted_dir = copy_run(gate_run, tmp_path / "drift")
    scale_values(drifted_dir, 1 + 0.5 * regression.DRIFT_REL)
    drifted = regression.compare(drifted_dir, base)
    assert drifted.verdict == "drift" and not drifted.beyond and drifted.drifted and not drifted.failed_contrasts
    assert drifted.summary().startswith("drift: ")
    moved_dir = copy_run(gate_run, tmp_path / "moved")
    scale_values(moved_dir, 1.01)
    moved = regression.compare(moved_dir, base)
    assert moved.verdict == "regression" and moved.beyond and not moved.failed_contrasts
    assert "values beyond float drift" in moved.summary() and "OUTPUT_VERSION" in moved.summary()


def test_drift_is_judged_on_the_scale_of_the_estimate(run: Path) -> None:
    values = {k: v for k, v in regression.flatten_metrics(run).items() if regression.kind_of(k) == "value"}
    scales = regression.sibling_scales(values)
    lip = "contrast.json:contrasts.top-1.lipschitz."
    assert scales[lip + "ci95.0"] == max(abs(values[lip + k]) for k in ("estimate", "ci95.0", "ci95.1", "median_delta",
                                                                          "tie_tolerance"))
    assert scales[lip + "wilcoxon_p"] == values[lip + "wilcoxon_p"]          # a p-value lends and borrows no scale
    assert scales[lip + "p_value"] == values[lip + "p_value"]
    assert scales[lip + "frac_lower"] == values[lip + "frac_lower"]
    assert scales["evaluate/full.json:fid"] == abs(values["evaluate/full.json:fid"])   # top-level: its own


def test_sign_flip_or_shrink_of_a_headline_contrast_is_a_regression(run: Path, base: dict[str, Any]) -> None:
    name, entry = guarded(base)
    policy = name.partition(" − ")[0]
    set_contrast(run, policy, "lipschitz", -entry["value"], abs(entry["value"]) / 4)
    flipped = regression.compare(run, base)
    assert flipped.verdict == "regression"
    assert [(r.name, r.why) for r in flipped.failed_contrasts] == [(name, "sign flipped")]
    assert f"{name} sign flipped" in flipped.summary()
    set_contrast(run, policy, "lipschitz", entry["value"] + 1.5 * entry["tolerance"] * entry["sign"], 0.0)
    grown = regression.compare(run, base)
    assert [(r.name, r.why) for r in grown.failed_contrasts] == [(name, "outside tolerance")]
    # a contrast that guards no sign passes within its tolerance on either side
    free = next(r for r in grown.contrasts if r.sign == 0 and r.name.startswith("top-1"))
    assert free.passed


def test_missing_contrast_file_or_value_is_a_regression(run: Path, base: dict[str, Any]) -> None:
    (run / "contrast.json").unlink()
    result = regression.compare(run, base)
    assert result.verdict == "regression" and {r.why for r in result.failed_contrasts} == {"missing"}
    assert len(result.failed_contrasts) == len(base["contrasts"])
    assert any(name.startswith("contrast.json:") and cur is None for name, _, cur in result.beyond)


def test_a_changed_constant_is_reported_as_a_constant(run: Path, base: dict[str, Any]) -> None:
    n = json.loads((run / "sample" / "full.json").read_text())["n"]
    edit(run / "sample" / "full.json", lambda d: d.update(n=n + 500))
    result = regression.compare(run, base)
    assert result.constants_changed == [("sample/full.json:n", float(n), float(n + 500))]
    assert result.verdict == "exact" and result.n_values == len(base["values"])   # not a gated metric
    assert "1 of" in result.summary() and "config constants differ" in result.summary()


def test_old_or_malformed_baseline_is_a_one_line_error(base: dict[str, Any]) -> None:
    old = {"why": "w", "git_commit": "x", "profile": "p", "metrics": {"a:b": {"value": 1, "abs_tol": 0, "rel_tol": 0}}}
    with pytest.raises(ArtifactError, match=r"ci.json is an old-format baseline .*ddmbench baseline --why"):
        regression.check_baseline(old, "ci.json")
    with pytest.raises(ArtifactError, match="malformed"):
        regression.check_baseline({**base, "contrasts": {"x": {"value": 1}}}, "ci.json")


# ---------------------------------------------------------------------------------------------
# ties at float noise
# ---------------------------------------------------------------------------------------------

def test_noise_on_a_policy_that_equals_full_on_some_seeds_moves_no_sign(gate_run: Project, tmp_path: Path) -> None:
    """threshold-0.3 takes both experts wherever the untrained router is unsure, so it equals full on every seed;
    make it differ on half the seeds, run the contrast stage, freeze that; then add ±1e-7 to the other half, as
    another float path would, and run the stage again: frac_lower, the Wilcoxon p and the gate's verdict hold."""
    root = Path(shutil.copytree(gate_run.root, tmp_path / "repo"))
    project = Project(root, gate_run.raw)
    path = project.paths.analysis_values("threshold-0.3")
    values = load_tensors(path, "analyze")
    half = len(values["seeds"]) // 2
    for key in ("amplification", "error_at_nfe", "lipschitz"):
        values[key][..., half:] *= 1.25                     # a real difference on the second half of the seeds
    save_tensors(path, values)
    invoke(root, "contrast")
    invoke(root, "baseline", "--why", "t", "--current", str(root / "metrics"), "--out", str(root / "tie.json"))
    before = json.loads((root / "metrics" / "contrast.json").read_text())["contrasts"]["threshold-0.3"]
    rng = np.random.default_rng(0)
    for key in ("amplification", "error_at_nfe", "lipschitz"):
        noise = torch.from_numpy(rng.choice([-1e-7, 1e-7], size=values[key][..., :half].shape)).float()
        values[key][..., :half] += noise
    save_tensors(path, values)
    invoke(root, "contrast")
    after = json.loads((root / "metrics" / "contrast.json").read_text())["contrasts"]["threshold-0.3"]
    for family in ("convergence_error", "lipschitz"):
        assert before[family]["frac_lower"] == 0                # higher on half the seeds, tied on the rest
        for stat in ("frac_lower", "wilcoxon_p", "median_delta"):
            assert after[family][stat] == before[family][stat], (family, stat)
    for eps, d in after["amplification"].items():
        assert (d["frac_lower"], d["wilcoxon_p"]) == (before["amplification"][eps]["frac_lower"],
                                                      before["amplification"][eps]["wilcoxon_p"])
    result = regression.compare(root / "metrics", json.loads((root / "tie.json").read_text()))
    assert result.verdict in ("exact", "drift") and not result.failed_contrasts, result.summary()


# ---------------------------------------------------------------------------------------------
# output versions and float paths
# ---------------------------------------------------------------------------------------------

def test_a_baseline_of_another_output_version_gates_its_contrasts_alone(gate_run: Project, base: dict[str, Any],
                                                                       tmp_path: Path) -> None:
    old = {**base, "output_version": regression.OUTPUT_VERSION - 1}
    moved = copy_run(gate_run, tmp_path / "moved")
    scale_values(moved, 1.01)
    result = regression.compare(moved, old)
    assert result.verdict == "stale-baseline" and result.beyond and not result.failed_contrasts
    assert result.summary().startswith("stale-baseline: ") and "not gated (baseline at output version 0" in result.summary()
    assert "cross-path tolerances" in result.summary()
    name, entry = guarded(base)
    set_contrast(moved, name.partition(" − ")[0], "lipschitz", -entry["value"], 0.0)
    assert regression.compare(moved, old).verdict == "regression"     # its contrasts still gate
    del old["output_version"]                                          # made before baselines recorded one
    assert regression.output_version(old) == 0 and regression.compare(moved, old).stale


def _on_machine(base: dict[str, Any], machine: dict[str, Any], run: Path) -> dict[str, Any]:
    """``base`` as if made on ``machine`` with evaluator aaaa…, and ``run`` moved beyond drift and measured with
    evaluator bbbb…: what another float path gives."""
    scale_values(run, 1.01)
    stamp(run, "b" * 64)
    return {**base, "machine": machine, "evaluator_sha256": "a" * 64}


def test_compare_refuses_another_evaluator_on_the_same_path(run: Path, base: dict[str, Any]) -> None:
    assert base["evaluator_sha256"] == regression.evaluator_digest(run)
    stamp(run, "b" * 64)
    with pytest.raises(ArtifactError, match=r"evaluator bbbbbbbbbbbb.*baseline with " + base["evaluator_sha256"][:12]):
        regression.compare(run, base)
    stamp(run, "a" * 64, ("evaluate/full.json",))
    with pytest.raises(ArtifactError, match="a" * 64 + "|" + "b" * 64):
        regression.evaluator_digest(run)


def test_baseline_of_another_float_path_gates_the_contrasts_alone(run: Path, base: dict[str, Any]) -> None:
    """Another vector ISA trains other models from the same seed (docs/regression-gate.md): (a) is not gated,
    the contrasts are, at their other-path tolerances; the same ISA with another digest is still refused."""
    other = _on_machine(base, {"isa": "avx2", "cpu": "c", "torch": "t"}, run)
    result = regression.compare(run, other, isa="avx512", vendor="intel")
    assert result.verdict == "other-machine" and result.beyond and not result.failed_contrasts
    assert result.summary().startswith("other-machine: ") and "avx2, this machine intel avx512" in result.summary()
    expected = [e["other_path"]["tolerance"] for _, e in sorted(other["contrasts"].items())]
    assert [r.tolerance for r in result.contrasts] == expected
    name, entry = guarded(base)
    set_contrast(run, name.partition(" − ")[0], "lipschitz", -entry["value"], 0.0)
    assert regression.compare(run, other, isa="avx512").verdict == "regression"
    with pytest.raises(ArtifactError, match="evaluator bbbbbbbbbbbb"):
        regression.compare(run, other, isa="avx2")


def test_a_missing_value_is_a_regression_on_any_machine(run: Path, base: dict[str, Any]) -> None:
    other = _on_machine(base, {"isa": "avx2", "cpu": "c", "torch": "t"}, run)
    (run / "analyze" / "full.json").unlink()
    assert regression.compare(run, other, isa="avx512").verdict == "regression"


def test_compare_picks_the_baseline_of_this_float_path() -> None:
    docs = {name: {"machine": {"isa": isa}} for name, isa in (("ci-avx2.json", "avx2"), ("ci-avx512.json", "avx512"))}
    assert float_paths.choose_baseline(docs, isa="avx512")[0] == "ci-avx512.json"
    assert float_paths.choose_baseline(docs, isa="avx2")[0] == "ci-avx2.json"
    assert float_paths.choose_baseline(docs, isa="aarch64")[0] == "ci-avx2.json"   # none: the first, (b) alone
    assert float_paths.choose_baseline({"old.json": {}}, isa="avx512")[0] == "old.json"   # no machine recorded
    with pytest.raises(ArtifactError, match="no baseline"):
        float_paths.choose_baseline({})


def test_another_cpu_vendor_is_another_float_path(run: Path, base: dict[str, Any]) -> None:
    """An AMD EPYC and an Intel Xeon, both AVX-512 at 2 threads, trained other evaluators from the same seed
    (docs/regression-gate.md): the vendor is part of the float path, so a run on the other vendor is
    judged on (b) alone instead of refused for its evaluator, and each vendor finds its own baseline."""
    intel = {"isa": "avx512", "cpu": "Intel(R) Xeon(R) Processor", "threads": 2}
    amd = {"isa": "avx512", "cpu": "AMD EPYC", "threads": 2}
    docs = {"ci-intel-avx512.json": {"machine": intel}, "ci-amd-avx512.json": {"machine": amd},
            "ci-amd-avx2.json": {"machine": {**amd, "isa": "avx2"}}}
    assert float_paths.choose_baseline(docs, isa="avx512", threads=2, vendor="amd")[0] == "ci-amd-avx512.json"
    assert float_paths.choose_baseline(docs, isa="avx512", threads=2, vendor="intel")[0] == "ci-intel-avx512.json"
    assert float_paths.choose_baseline(docs, isa="avx2", threads=2, vendor="intel")[0] == "ci-amd-avx2.json"
    assert float_paths.baseline_name(float_paths.path_of({"machine": amd})) == "ci-amd-avx512.json"
    assert float_paths.baseline_name(float_paths.path_of({"machine": {"isa": "aarch64", "cpu": "Neoverse"}})) == \
        "ci-aarch64.json"
    other = _on_machine(base, intel, run)
    result = regression.compare(run, other, isa="avx512", threads=2, vendor="amd")
    assert result.verdict == "other-machine" and not result.failed_contrasts
    assert "intel avx512 with 2 threads, this machine amd avx512 with 2 threads" in result.summary()
    with pytest.raises(ArtifactError, match="evaluator bbbbbbbbbbbb"):
        regression.compare(run, other, isa="avx512", threads=2, vendor="intel")


def test_another_thread_count_is_another_float_path(run: Path, base: dict[str, Any]) -> None:
    """1 vs 2 intra-op threads trained another evaluator from the same seed (docs/regression-gate.md): a run
    with another thread count than its baseline's gets (b) alone and a hint, not an evaluator refusal."""
    other = _on_machine(base, {"isa": "avx512", "cpu": "c", "torch": "t", "threads": 2}, run)
    result = regression.compare(run, other, isa="avx512", threads=1, vendor="intel")
    assert result.verdict == "other-machine" and not result.failed_contrasts
    assert "avx512 with 2 threads, this machine intel avx512 with 1 thread; OMP_NUM_THREADS=2" in result.summary()
    with pytest.raises(ArtifactError, match="evaluator bbbbbbbbbbbb"):
        regression.compare(run, other, isa="avx512", threads=2)
    docs = {"t1.json": {"machine": {"isa": "avx512", "threads": 1}}, "t2.json": {"machine": {"isa": "avx512", "threads": 2}},
            "avx2.json": {"machine": {"isa": "avx2", "threads": 2}}}
    assert float_paths.choose_baseline(docs, isa="avx512", threads=2)[0] == "t2.json"
    assert float_paths.choose_baseline(docs, isa="avx512", threads=1)[0] == "t1.json"
    assert float_paths.choose_baseline(docs, isa="avx512", threads=4)[0] == "t1.json"     # same ISA, (b) alone
    assert float_paths.choose_baseline(docs, isa="avx2", threads=1)[0] == "avx2.json"


# ---------------------------------------------------------------------------------------------
# spread: the other-path tolerances
# ---------------------------------------------------------------------------------------------

def test_spread_sets_the_other_path_tolerance_and_guards_a_sign_only_all_runs_share(gate_run: Project,
                                                                                  tmp_path: Path) -> None:
    """Three runs whose top-1 − full Lipschitz differs (as training seeds and float paths make it): the spread's
    range sets the other-path tolerance; a sign that one run does not share is not guarded from another path."""
    runs = {f"s{i}": copy_run(gate_run, tmp_path / f"s{i}") for i in range(3)}
    lip = json.loads((runs["s0"] / "contrast.json").read_text())["contrasts"]["top-1"]["lipschitz"]
    value, half = lip["estimate"], (lip["ci95"][1] - lip["ci95"][0]) / 2
    assert lip["ci95"][0] > 0                                       # guarded on the run's own path
    set_contrast(runs["s1"], "top-1", "lipschitz", value * 1.2, half)
    set_contrast(runs["s2"], "top-1", "lipschitz", value * 0.9, half)
    edit(runs["s2"] / "sample" / "full.json", lambda d: d.update(wall_time_s=d["wall_time_s"] + 5))
    out = spread_tool.spread(runs)
    c = out["metrics"]["contrast top-1 − full: lipschitz"]
    assert c["kind"] == "contrast" and c["range"] == pytest.approx(0.3 * value) and c["n"] == 3
    assert c["tolerance"] == pytest.approx(regression.SPREAD_MULTIPLE * 0.3 * value)
    assert not any(k.endswith("wall_time_s") for k in out["metrics"])
    base = regression.make_baseline(runs["s0"], why="t", git_commit="x", profile="p", spread=out)
    entry = base["contrasts"]["top-1 − full: lipschitz"]
    assert entry["basis"] == "ci95" and entry["tolerance"] == pytest.approx(min(half, value))   # same path: sampling
    assert entry["other_path"]["basis"] == "spread" and entry["sign"] == 1
    assert entry["other_path"] == {"tolerance": pytest.approx(min(regression.SPREAD_MULTIPLE * 0.3 * value, value)),
                                   "sign": 1, "basis": "spread"}
    set_contrast(runs["s2"], "top-1", "lipschitz", -0.5 * value, half)       # one run of the spread disagrees
    entry = regression.make_baseline(runs["s0"], why="t", git_commit="x", profile="p",
                                     spread=spread_tool.spread(runs))["contrasts"]["top-1 − full: lipschitz"]
    assert entry["sign"] == 1 and entry["other_path"]["sign"] == 0
    assert entry["other_path"]["tolerance"] == pytest.approx(regression.SPREAD_MULTIPLE * 1.7 * value)
    with pytest.raises(ArtifactError, match="at least 2 runs"):
        spread_tool.spread({"only": runs["s0"]})


# ---------------------------------------------------------------------------------------------
# the CLI
# ---------------------------------------------------------------------------------------------

def test_cli_baseline_and_compare_exit_codes(gate_run: Project, tmp_path: Path) -> None:
    root = Path(shutil.copytree(gate_run.root, tmp_path / "repo"))
    made = run_cli(root, "baseline", "--why", "first baseline", "--out", "bl.json")
    assert made.exit_code == 0, made.output
    contrasts = json.loads((root / "bl.json").read_text())["contrasts"]
    n, guarded_n = len(contrasts), sum(1 for e in contrasts.values() if e["sign"])
    assert f"{n} headline contrasts ({guarded_n} with a guarded sign)" in made.output and guarded_n > 0
    runner = CliRunner(env={"COLUMNS": "200"})

    def compare(*args: str) -> Any:
        import os
        old = Path.cwd()
        os.chdir(root)
        try:
            return runner.invoke(app, ["compare", *args])
        finally:
            os.chdir(old)
    exact = compare("metrics", "bl.json")
    assert exact.exit_code == 0 and exact.output.strip().splitlines()[-1].startswith("exact: "), exact.output
    folder = root / "baselines"                 # a folder: other JSON beside the baseline is not a baseline
    folder.mkdir()
    (root / "bl.json").rename(folder / "bl.json")
    (folder / "drift.json").write_text(json.dumps({"values": 2000, "bit_identical": 915}))
    (folder / "spread.json").write_text(json.dumps({"metrics": {}}))
    in_folder = compare("metrics", "baselines")
    assert in_folder.exit_code == 0 and in_folder.output.strip().splitlines()[-1].startswith("exact: "), in_folder.output
    (folder / "bl.json").rename(root / "bl.json")
    scale_values(root / "metrics", 1 + 0.5 * regression.DRIFT_REL)
    drift = compare("metrics", "bl.json")
    assert drift.exit_code == 0 and drift.output.strip().splitlines()[-1].startswith("drift: ")
    name, entry = guarded(json.loads((root / "bl.json").read_text()))
    set_contrast(root / "metrics", name.partition(" − ")[0], "lipschitz", -entry["value"], 0.0)
    flipped = compare("metrics", "bl.json", "--failures-only")
    assert flipped.exit_code == 1 and flipped.output.strip().splitlines()[-1].startswith("regression: ")
    assert "sign flipped" in flipped.output and "convergence_error" not in flipped.output.split("regression:")[0]
    missing = compare("metrics", "nope.json")
    assert missing.exit_code == 2 and "nope.json" in missing.output
    (root / "old.json").write_text(json.dumps({"why": "w", "metrics": {}}))
    old = compare("metrics", "old.json")
    assert old.exit_code == 2 and "old-format baseline" in old.output and "Traceback" not in old.output


def test_cli_spread_writes_json_and_table(gate_run: Project, tmp_path: Path) -> None:
    for i in range(2):
        copy_run(gate_run, tmp_path / f"run{i}" / "metrics")
    scale_values(tmp_path / "run1" / "metrics", 1.01)
    result = CliRunner(env={"COLUMNS": "200"}).invoke(
        app, ["spread", str(tmp_path / "run0/metrics"), str(tmp_path / "run1/metrics"), "--out", str(tmp_path / "s.json"),
              "--all"])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "s.json").read_text())
    assert data["runs"] == [str(tmp_path / "run0/metrics"), str(tmp_path / "run1/metrics")]
    fid = json.loads((tmp_path / "run0/metrics/evaluate/full.json").read_text())["fid"]
    assert data["metrics"]["evaluate/full.json:fid"]["range"] == pytest.approx(0.01 * fid)
    assert "contrast top-1 − full: lipschitz" in data["metrics"] and "18 contrasts" in result.output
    contrasts_only = CliRunner(env={"COLUMNS": "200"}).invoke(
        app, ["spread", str(tmp_path / "run0/metrics"), str(tmp_path / "run1/metrics"), "--out", str(tmp_path / "c.json")])
    assert contrasts_only.exit_code == 0
    assert {m["kind"] for m in json.loads((tmp_path / "c.json").read_text())["metrics"].values()} == {"contrast"}


def test_a_baseline_file_is_a_run_of_the_spread(gate_run: Project) -> None:
    """A baseline records its run's numbers, so a run made on another machine joins the spread through its
    committed baseline: the same headline estimates as the metrics folder, policy names with dots included."""
    folder = spread_tool.run_numbers(gate_run.root / "metrics")
    recorded = spread_tool.run_numbers(gate_run.root / "baseline.json")
    contrasts = {k: v for k, v in folder.items() if k.startswith("contrast ")}
    assert "contrast threshold-0.3 − full: amplification eps_0.1" in contrasts
    assert {k: v for k, v in recorded.items() if k.startswith("contrast ")} == contrasts
    out = spread_tool.spread({"folder": gate_run.root / "metrics", "baseline": gate_run.root / "baseline.json"})
    assert all(out["metrics"][k]["range"] == 0 for k in contrasts)


def test_this_path_only_gates_only_a_baseline_of_this_float_path(gate_run: Project, run: Path, base: dict[str, Any],
                                                                tmp_path: Path) -> None:
    scale_values(run, 1.5)                                       # a run the gate fails on this float path
    here = tmp_path / "here.json"
    here.write_text(json.dumps(base))
    failed = CliRunner().invoke(app, ["compare", str(run), str(here), "--this-path-only"])
    assert failed.exit_code == 1 and "regression" in failed.output
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text(json.dumps({**base, "machine": {**base["machine"], "isa": "aarch64", "cpu": "other"}}))
    skipped = CliRunner().invoke(app, ["compare", str(run), str(elsewhere), "--this-path-only"])
    assert skipped.exit_code == 0 and "not gated: no baseline" in skipped.output
    assert CliRunner().invoke(app, ["compare", str(run), str(elsewhere)]).exit_code == 1   # without: (b) is gated
