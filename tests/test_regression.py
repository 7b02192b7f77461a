"""`ddmbench compare` / `baseline` / `spread` on synthetic metrics folders: determinism (exact / drift), the
headline contrasts (sign and tolerance), constants reported apart, old baselines refused, exit codes."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from ddmbench.cli import app
from ddmbench.errors import ArtifactError
from ddmbench.tools import float_paths, regression
from ddmbench.tools import spread as spread_tool

TOP1_FID = (-8.0, -11.0, -5.0)     # top-1 − full: delta and its paired 95% interval (excludes 0: sign guarded)


def _contrast(delta: float, lo: float, hi: float, n: int = 64) -> dict:
    return {"delta": delta, "delta_ci95": [lo, hi], "n": n, "verdict": "lower" if hi < 0 else "higher" if lo > 0
            else "not separable"}


def _metrics(root: Path, *, fid: float = 40.0, top1_fid: tuple[float, float, float] = TOP1_FID, n: int = 300,
             scale: float = 1.0, wall: float = 3.0) -> Path:
    """A metrics folder like the pipeline's: evaluate/ and sample/ for full and top-1, analyze/full.json and
    contrast.json. ``scale`` multiplies every non-constant value (float drift when close to 1)."""
    d = root / "metrics"
    for sub in ("evaluate", "sample", "analyze"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    for policy, f, kid in (("full", fid, 2.0), ("top-1", fid + top1_fid[0], 3.0)):
        (d / "evaluate" / f"{policy}.json").write_text(json.dumps(
            {"policy": policy, "fid": f * scale, "kid": kid * scale, "kid_ci95": [(kid - 0.2) * scale, (kid + 0.2) * scale],
             "n_fake": n, "bootstrap": 200, "cost": {"wall_time_s": wall, "expert_evals_per_image": 20.0}}))
        (d / "sample" / f"{policy}.json").write_text(json.dumps(
            {"n": n, "nfe_per_sample": 10, "wall_time_s": wall, "images_per_s": 100 / wall,
             "expert_evals_by_expert": [1.0 * scale, 2.0 * scale]}))
    (d / "analyze" / "full.json").write_text(json.dumps(
        {"n": 16, "amplification": {"eps_0.1": {"mean": 1.2 * scale}}, "convergence": {"steps": [4, 8]}}))
    (d / "contrast.json").write_text(json.dumps({"reference": "full", "contrasts": {"top-1": {
        "fid": {**_contrast(*(v * scale for v in top1_fid), n=n), "bootstrap": 200},
        "amplification": {"eps_0.1": _contrast(0.01 * scale, -0.02 * scale, 0.04 * scale, n=16)},
        "convergence_error": _contrast(0.3 * scale, 0.1 * scale, 0.5 * scale, n=16)}}}))
    return d


def _baseline(tmp_path: Path, **kw: object) -> dict:
    return regression.make_baseline(_metrics(tmp_path / "base", **kw), why="t", git_commit="x", profile="p")


def test_flatten_names_file_and_key(tmp_path: Path) -> None:
    flat = regression.flatten_metrics(_metrics(tmp_path))
    assert flat["evaluate/full.json:fid"] == 40.0
    assert flat["evaluate/full.json:cost.wall_time_s"] == 3.0
    assert flat["sample/full.json:expert_evals_by_expert.1"] == 2.0
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
    for value in ("evaluate/full.json:fid", "contrast.json:contrasts.top-1.fid.delta", "router.json:heldout.acc_t0",
                  "sample/full.json:expert_evals_by_expert.0", "evaluate/full.json:cost.expert_evals_per_image"):
        assert regression.kind_of(value) == "value", value


def test_headline_contrasts_from_contrast_json_and_kid(tmp_path: Path) -> None:
    c = regression.headline_contrasts(_metrics(tmp_path))
    assert set(c) == {"top-1 − full: fid", "top-1 − full: amplification eps_0.1", "top-1 − full: convergence_error",
                      "top-1 − full: kid"}
    assert c["top-1 − full: fid"] == regression.Contrast(*TOP1_FID)
    kid = c["top-1 − full: kid"]                 # 3 − 2, unpaired half-width √(0.2² + 0.2²)
    assert kid.value == pytest.approx(1.0) and kid.high - kid.value == pytest.approx(0.2 * math.sqrt(2))


def test_contrast_tolerance_never_exceeds_the_effect_it_guards() -> None:
    assert regression.contrast_tolerance(regression.Contrast(-8.0, -11.0, -5.0)) == (3.0, -1)   # half-width
    assert regression.contrast_tolerance(regression.Contrast(1.0, 0.1, 3.9)) == (1.0, 1)        # capped at |effect|
    assert regression.contrast_tolerance(regression.Contrast(0.01, -0.02, 0.04)) == (pytest.approx(0.03), 0)
    assert regression.contrast_tolerance(regression.Contrast(-8.0, -11.0, -5.0), spread_range=0.5) == (1.0, -1)
    # a zero measured spread still leaves room for float drift
    assert regression.contrast_tolerance(regression.Contrast(-8.0, -11.0, -5.0), 0.0, 1e-3) == (pytest.approx(0.011), -1)
    rng = np.random.default_rng(0)
    for _ in range(500):
        value, half, spread_range = rng.normal(0, 5), rng.exponential(3), rng.choice([None, rng.exponential(3)])
        c = regression.Contrast(value, value - half, value + half)
        tol, sign = regression.contrast_tolerance(c, spread_range)
        assert tol >= 0 and (sign == 0 or tol <= abs(value))
        assert sign == (1 if c.low > 0 else -1 if c.high < 0 else 0)


def test_same_folder_is_exact(tmp_path: Path) -> None:
    base = _baseline(tmp_path)
    assert base["format"] == regression.FORMAT
    assert "evaluate/full.json:fid" in base["values"] and "sample/full.json:n" in base["constants"]
    assert not any(k.endswith("wall_time_s") for k in [*base["values"], *base["constants"]])
    assert base["contrasts"]["top-1 − full: fid"]["sign"] == -1
    result = regression.compare(_metrics(tmp_path / "run", wall=99.0), base)   # timings never compared
    assert result.verdict == "exact" and result.exact == result.n_values == len(base["values"])
    assert result.summary().startswith(f"exact: all {result.n_values} values reproduce bit for bit; 4 of 4")


def test_float_drift_is_drift_and_more_is_regression(tmp_path: Path) -> None:
    base = _baseline(tmp_path)
    drifted = regression.compare(_metrics(tmp_path / "drift", scale=1 + 0.5 * regression.DRIFT_REL), base)
    assert drifted.verdict == "drift" and not drifted.beyond and drifted.drifted
    assert drifted.summary().startswith("drift: ") and "4 of 4 headline contrasts hold" in drifted.summary()
    moved = regression.compare(_metrics(tmp_path / "moved", scale=1.01), base)
    assert moved.verdict == "regression" and moved.beyond and not moved.failed_contrasts
    assert "values beyond float drift" in moved.summary() and "4 of 4 headline contrasts hold" in moved.summary()


def test_drift_is_judged_on_the_scale_of_the_estimate() -> None:
    values = {"contrast.json:contrasts.m.fid.delta": 21.0, "contrast.json:contrasts.m.fid.delta_ci95.0": -0.09,
              "contrast.json:contrasts.m.fid.delta_ci95.1": 47.0, "contrast.json:contrasts.m.lipschitz.wilcoxon_p": 0.9,
              "contrast.json:contrasts.m.lipschitz.delta": -0.16, "evaluate/full.json:fid": 40.0,
              "evaluate/full.json:recall": 0.26, "evaluate/full.json:kid_ci95.0": 2.2, "evaluate/full.json:kid_ci95.1": 2.6}
    scales = regression.sibling_scales(values)
    assert scales["contrast.json:contrasts.m.fid.delta_ci95.0"] == 47.0          # an interval bound near 0
    assert scales["contrast.json:contrasts.m.lipschitz.delta"] == 0.16           # a p-value lends no scale
    assert scales["contrast.json:contrasts.m.lipschitz.wilcoxon_p"] == 0.9
    assert scales["evaluate/full.json:recall"] == 0.26                           # top-level numbers: their own
    assert scales["evaluate/full.json:kid_ci95.0"] == 2.6


def test_sign_flip_of_a_headline_contrast_is_a_regression(tmp_path: Path) -> None:
    base = _baseline(tmp_path)
    flipped = regression.compare(_metrics(tmp_path / "flip", top1_fid=(0.5, -2.5, 3.5)), base)   # top-1 ≈ full now
    assert flipped.verdict == "regression"
    assert [(r.name, r.why) for r in flipped.failed_contrasts] == [("top-1 − full: fid", "sign flipped")]
    assert "top-1 − full: fid sign flipped" in flipped.summary()
    # same sign, but half the effect: outside the tolerance (the baseline's half-width, 3)
    shrunk = regression.compare(_metrics(tmp_path / "shrunk", top1_fid=(-4.0, -7.0, -1.0)), base)
    assert [(r.name, r.why) for r in shrunk.failed_contrasts] == [("top-1 − full: fid", "outside tolerance")]
    # a not-separable contrast guards no sign: within its half-width either side passes
    row = next(r for r in flipped.contrasts if r.name == "top-1 − full: amplification eps_0.1")
    assert row.sign == 0 and row.passed


def test_missing_contrast_or_value_is_a_regression(tmp_path: Path) -> None:
    base = _baseline(tmp_path)
    run = _metrics(tmp_path / "run")
    (run / "contrast.json").unlink()
    result = regression.compare(run, base)
    assert result.verdict == "regression" and {r.why for r in result.failed_contrasts} == {"missing"}
    assert ("contrast.json:contrasts.top-1.fid.delta", -8.0, None) in result.beyond


def test_a_changed_constant_is_reported_as_a_constant(tmp_path: Path) -> None:
    base = _baseline(tmp_path)
    run = _metrics(tmp_path / "run")
    sample = json.loads((run / "sample" / "full.json").read_text())
    (run / "sample" / "full.json").write_text(json.dumps({**sample, "n": 500}))
    result = regression.compare(run, base)
    assert result.constants_changed == [("sample/full.json:n", 300.0, 500.0)]
    assert result.verdict == "exact" and result.n_values == len(base["values"])   # not a gated metric
    assert "1 of" in result.summary() and "config constants differ" in result.summary()


def test_old_or_malformed_baseline_is_a_one_line_error(tmp_path: Path) -> None:
    old = {"why": "w", "git_commit": "x", "profile": "p", "metrics": {"a:b": {"value": 1, "abs_tol": 0, "rel_tol": 0}}}
    with pytest.raises(ArtifactError, match=r"ci.json is an old-format baseline .*ddmbench baseline --why"):
        regression.check_baseline(old, "ci.json")
    with pytest.raises(ArtifactError, match="malformed"):
        regression.check_baseline({**_baseline(tmp_path), "contrasts": {"x": {"value": 1}}}, "ci.json")


def test_spread_of_values_and_contrasts(tmp_path: Path) -> None:
    runs = {f"seed{i}": _metrics(tmp_path / f"s{i}", fid=fid, top1_fid=(d, d - 3, d + 3), wall=w)
            for i, (fid, d, w) in enumerate([(40.0, -8.0, 3.0), (44.0, -6.0, 5.0), (42.0, -7.0, 4.0)])}
    out = spread_tool.spread(runs)
    fid = out["metrics"]["evaluate/full.json:fid"]
    assert (fid["n"], fid["mean"], fid["min"], fid["max"], fid["range"]) == (3, 42.0, 40.0, 44.0, 4.0)
    assert fid["std"] == pytest.approx(2.0) and fid["kind"] == "value" and fid["tolerance"] is None
    c = out["metrics"]["contrast top-1 − full: fid"]
    assert c["kind"] == "contrast" and c["range"] == 2.0 and c["tolerance"] == regression.SPREAD_MULTIPLE * 2.0
    assert not any(k.endswith("wall_time_s") for k in out["metrics"])
    base = regression.make_baseline(runs["seed0"], why="t", git_commit="x", profile="p", spread=out)
    entry = base["contrasts"]["top-1 − full: fid"]
    assert entry["basis"] == "spread" and entry["tolerance"] == min(regression.SPREAD_MULTIPLE * 2.0, 8.0)
    with pytest.raises(ArtifactError, match="at least 2 runs"):
        spread_tool.spread({"only": runs["seed0"]})


def test_cli_baseline_and_compare_exit_codes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    _metrics(tmp_path)
    Path("params.yaml").write_text((Path(__file__).resolve().parents[1] / "params" / "ci.yaml").read_text())
    runner = CliRunner(env={"COLUMNS": "200"})
    made = runner.invoke(app, ["baseline", "--why", "first baseline", "--out", "bl.json"])
    assert made.exit_code == 0, made.output
    assert "4 headline contrasts (3 with a guarded sign)" in made.output
    assert json.loads(Path("bl.json").read_text())["why"] == "first baseline"
    exact = runner.invoke(app, ["compare", "metrics", "bl.json"])
    assert exact.exit_code == 0 and exact.output.strip().splitlines()[-1].startswith("exact: ")
    folder = Path("baselines")                 # a folder: other JSON beside the baseline is not a baseline
    folder.mkdir()
    Path("bl.json").rename(folder / "bl.json")
    (folder / "drift.json").write_text(json.dumps({"values": 2000, "bit_identical": 915}))
    (folder / "spread.json").write_text(json.dumps({"metrics": {}}))
    in_folder = runner.invoke(app, ["compare", "metrics", "baselines"])
    assert in_folder.exit_code == 0 and in_folder.output.strip().splitlines()[-1].startswith("exact: "), in_folder.output
    (folder / "bl.json").rename("bl.json")
    _metrics(tmp_path, scale=1 + 0.5 * regression.DRIFT_REL)
    drift = runner.invoke(app, ["compare", "metrics", "bl.json"])
    assert drift.exit_code == 0 and drift.output.strip().splitlines()[-1].startswith("drift: ")
    _metrics(tmp_path, top1_fid=(0.5, -2.5, 3.5))
    flipped = runner.invoke(app, ["compare", "metrics", "bl.json", "--failures-only"])
    assert flipped.exit_code == 1 and flipped.output.strip().splitlines()[-1].startswith("regression: ")
    assert "sign flipped" in flipped.output and "convergence_error" not in flipped.output.split("regression:")[0]
    missing = runner.invoke(app, ["compare", "metrics", "nope.json"])
    assert missing.exit_code == 2 and "nope.json" in missing.output
    Path("old.json").write_text(json.dumps({"why": "w", "metrics": {}}))
    old = runner.invoke(app, ["compare", "metrics", "old.json"])
    assert old.exit_code == 2 and "old-format baseline" in old.output and "Traceback" not in old.output


def test_cli_spread_writes_json_and_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for i, fid in enumerate((40.0, 41.0)):
        _metrics(tmp_path / f"run{i}", fid=fid)
    result = CliRunner(env={"COLUMNS": "200"}).invoke(app, ["spread", "run0/metrics", "run1/metrics", "--out", "s.json"])
    assert result.exit_code == 0, result.output
    data = json.loads(Path("s.json").read_text())
    assert data["runs"] == ["run0/metrics", "run1/metrics"]
    assert data["metrics"]["evaluate/full.json:fid"]["range"] == pytest.approx(1.0)
    assert "contrast top-1 − full: fid" in result.output and "wrote s.json" in result.output


def _stamp(metrics: Path, digest: str, files: tuple[str, ...] = ("evaluate/full.json", "evaluate/top-1.json")) -> None:
    for name in files:
        path = metrics / name
        path.write_text(json.dumps({**json.loads(path.read_text()), "evaluator_sha256": digest}))


def test_compare_refuses_another_evaluator(tmp_path: Path) -> None:
    base_dir = _metrics(tmp_path / "base")
    _stamp(base_dir, "a" * 64)
    base = regression.make_baseline(base_dir, why="t", git_commit="x", profile="p")
    assert base["evaluator_sha256"] == "a" * 64
    same = _metrics(tmp_path / "same")
    _stamp(same, "a" * 64)
    assert regression.compare(same, base).verdict == "exact"
    other = _metrics(tmp_path / "other")
    _stamp(other, "b" * 64)
    with pytest.raises(ArtifactError, match=r"evaluator bbbbbbbbbbbb.*baseline with aaaaaaaaaaaa"):
        regression.compare(other, base)
    mixed = _metrics(tmp_path / "mixed")
    _stamp(mixed, "a" * 64, ("evaluate/full.json",))
    _stamp(mixed, "b" * 64, ("evaluate/top-1.json",))
    with pytest.raises(ArtifactError, match="a" * 64 + "|" + "b" * 64):
        regression.evaluator_digest(mixed)


def _baseline_and_moved(tmp_path: Path, machine: dict[str, Any]) -> tuple[dict[str, Any], Path]:
    """A baseline made on ``machine`` with evaluator aaaa…, and a run whose every value moved beyond drift (its
    contrasts hold) measured with evaluator bbbb…: what another float path gives."""
    base_dir = _metrics(tmp_path / "base")
    _stamp(base_dir, "a" * 64)
    base = {**regression.make_baseline(base_dir, why="t", git_commit="x", profile="p"), "machine": machine}
    moved = _metrics(tmp_path / "moved", scale=1.1)
    _stamp(moved, "b" * 64)
    return base, moved


def test_baseline_of_another_float_path_gates_the_contrasts_alone(tmp_path: Path) -> None:
    """Another vector ISA trains another evaluator from the same seed (measured: AVX2 vs AVX-512, README of
    reports/baseline): (a) is not gated, the contrasts are; the same ISA with another digest is still refused."""
    base, moved = _baseline_and_moved(tmp_path, {"isa": "avx2", "cpu": "c", "torch": "t"})
    result = regression.compare(moved, base, isa="avx512", vendor="intel")
    assert result.verdict == "other-machine" and result.beyond and not result.failed_contrasts
    assert result.summary().startswith("other-machine: ") and "avx2, this machine intel avx512" in result.summary()
    flipped = _metrics(tmp_path / "flipped", top1_fid=(0.5, -2.5, 3.5))
    _stamp(flipped, "b" * 64)
    assert regression.compare(flipped, base, isa="avx512").verdict == "regression"
    (moved / "analyze" / "full.json").unlink()               # a missing value is a regression on any machine
    assert regression.compare(moved, base, isa="avx512").verdict == "regression"
    with pytest.raises(ArtifactError, match="evaluator bbbbbbbbbbbb"):
        regression.compare(flipped, base, isa="avx2")


def test_compare_picks_the_baseline_of_this_float_path(tmp_path: Path) -> None:
    docs = {name: {"machine": {"isa": isa}} for name, isa in (("ci-avx2.json", "avx2"), ("ci-avx512.json", "avx512"))}
    assert float_paths.choose_baseline(docs, isa="avx512")[0] == "ci-avx512.json"
    assert float_paths.choose_baseline(docs, isa="avx2")[0] == "ci-avx2.json"
    assert float_paths.choose_baseline(docs, isa="aarch64")[0] == "ci-avx2.json"   # none: the first, (b) alone
    assert float_paths.choose_baseline({"old.json": {}}, isa="avx512")[0] == "old.json"   # no machine recorded
    with pytest.raises(ArtifactError, match="no baseline"):
        float_paths.choose_baseline({})


def test_another_cpu_vendor_is_another_float_path(tmp_path: Path) -> None:
    """An AMD EPYC and an Intel Xeon, both AVX-512 at 2 threads, trained other evaluators from the same seed
    (reports/baseline/README.md): the vendor is part of the float path, so a run on the other vendor is
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
    base, moved = _baseline_and_moved(tmp_path, intel)
    result = regression.compare(moved, base, isa="avx512", threads=2, vendor="amd")
    assert result.verdict == "other-machine" and not result.failed_contrasts
    assert "intel avx512 with 2 threads, this machine amd avx512 with 2 threads" in result.summary()
    with pytest.raises(ArtifactError, match="evaluator bbbbbbbbbbbb"):
        regression.compare(moved, base, isa="avx512", threads=2, vendor="intel")


def test_cli_compare_reads_a_folder_of_baselines_and_skips_spread_files(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    _metrics(tmp_path)
    folder = tmp_path / "baselines"
    folder.mkdir()
    doc = regression.make_baseline(tmp_path / "metrics", why="t", git_commit="x", profile="p")
    (folder / float_paths.baseline_name(float_paths.path_of(doc))).write_text(json.dumps(doc))
    (folder / "spread-ci.json").write_text(json.dumps({"runs": [], "metrics": {}}))
    result = CliRunner(env={"COLUMNS": "200"}).invoke(app, ["compare", "metrics", "baselines"])
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[-1].startswith("exact: ")


def test_another_thread_count_is_another_float_path(tmp_path: Path) -> None:
    """1 vs 2 intra-op threads trained another evaluator from the same seed (reports/baseline/README.md): a run
    with another thread count than its baseline's gets (b) alone and a hint, not an evaluator refusal."""
    base, moved = _baseline_and_moved(tmp_path, {"isa": "avx512", "cpu": "c", "torch": "t", "threads": 2})
    result = regression.compare(moved, base, isa="avx512", threads=1, vendor="intel")
    assert result.verdict == "other-machine" and not result.failed_contrasts
    assert "avx512 with 2 threads, this machine intel avx512 with 1 thread; OMP_NUM_THREADS=2" in result.summary()
    with pytest.raises(ArtifactError, match="evaluator bbbbbbbbbbbb"):
        regression.compare(moved, base, isa="avx512", threads=2)
    docs = {"t1.json": {"machine": {"isa": "avx512", "threads": 1}}, "t2.json": {"machine": {"isa": "avx512", "threads": 2}},
            "avx2.json": {"machine": {"isa": "avx2", "threads": 2}}}
    assert float_paths.choose_baseline(docs, isa="avx512", threads=2)[0] == "t2.json"
    assert float_paths.choose_baseline(docs, isa="avx512", threads=1)[0] == "t1.json"
    assert float_paths.choose_baseline(docs, isa="avx512", threads=4)[0] == "t1.json"     # same ISA, (b) alone
    assert float_paths.choose_baseline(docs, isa="avx2", threads=1)[0] == "avx2.json"
