"""benchmarks/speed_vs_commit.py: stage groups and their wall times read from timed logs of both pipeline
runners (``dvc repro`` and ``ddmbench repro --jobs N``), and the speed profile is the c70887f default."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("speed_vs_commit", REPO / "benchmarks" / "speed_vs_commit.py")
speed = importlib.util.module_from_spec(spec)
sys.modules["speed_vs_commit"] = speed
spec.loader.exec_module(speed)

DVC_LOG = """\
[     0.8s] Running stage 'prepare':
[     8.6s] Running stage 'train-evaluator':
[    67.4s] Epoch 0/-2 500/500
[    70.0s] Running stage 'cluster':
[    90.0s] Running stage 'train-expert@0':
[   190.0s] Running stage 'train-expert@1':
[   290.0s] Running stage 'train-monolith':
[   690.0s] Running stage 'sample@full':
[   700.0s] Running stage 'evaluate@full':
[   705.0s] Running stage 'sample@top-1':
[   709.0s] Running stage 'evaluate@top-1':
[   712.0s] Running stage 'expert-accuracy':
[   720.0s] Running stage 'analyze@full':
[   800.0s] Running stage 'contrast':
[   810.0s] Running stage 'report':
rc=0 total=815.5
"""

JOBS_LOG = """\
[     2.7s] prepare: not in dvc.lock yet; running `ddmbench prepare`
[     8.4s] train-evaluator: not in dvc.lock yet; running `ddmbench train-evaluator`
[   109.5s] train-expert@*: 8 stale stages in 2 processes of 1 thread(s): train-expert@0, train-expert@1
[   488.3s] train-expert@0: ran in a worker process; recorded
[   489.7s] train-monolith: not in dvc.lock yet; running `ddmbench train-monolith`
[   801.9s] sample@*: 18 stale stages in 2 processes of 1 thread(s): sample@monolith
[  1267.5s] sample@monolith: ran in a worker process; recorded
[  1300.0s] report: params changed; running `ddmbench report`
[  1310.0s] 2 stage(s) ran: prepare, report
== exit 0 after 1311.0 s
"""


def test_dvc_repro_log_groups_interleaved_stages_and_sums_to_the_total(tmp_path: Path) -> None:
    log = tmp_path / "old.log"
    log.write_text(DVC_LOG)
    got = speed.group_seconds(log)
    g = got["groups_s"]
    assert got["exit"] == 0 and got["total_s"] == 815.5
    assert g["start-up"] == 0.8
    assert g["prepare, evaluator, clustering, features, router"] == pytest.approx(89.2)
    assert g["experts"] == 200.0 and g["monolith"] == 400.0
    # sample and evaluate alternate per policy in dvc's order: each stretch counts to its own group
    assert g["sampling"] == pytest.approx(10.0 + 4.0) and g["evaluation"] == pytest.approx(5.0 + 3.0)
    assert g["expert accuracy, router calibration"] == 8.0 and g["trajectory analyses"] == 80.0
    assert g["contrast, report"] == pytest.approx(15.5)
    assert sum(g.values()) == pytest.approx(got["total_s"])


def test_jobs_log_groups_worker_stages_and_a_killed_run_ends_at_its_last_line(tmp_path: Path) -> None:
    log = tmp_path / "new.log"
    log.write_text(JOBS_LOG)
    got = speed.group_seconds(log)
    g = got["groups_s"]
    assert got["exit"] == 0 and got["total_s"] == 1311.0
    assert g["prepare, evaluator, clustering, features, router"] == pytest.approx(109.5 - 2.7)
    assert g["experts"] == pytest.approx(489.7 - 109.5)       # the workers' "recorded" lines stay in the group
    assert g["monolith"] == pytest.approx(801.9 - 489.7)
    assert g["sampling"] == pytest.approx(1300.0 - 801.9)
    assert g["contrast, report"] == pytest.approx(11.0)
    log.write_text("".join(JOBS_LOG.splitlines(keepends=True)[:-1]))
    killed = speed.group_seconds(log)
    assert killed["exit"] == -1 and killed["total_s"] == 1310.0


def test_collect_table_and_fractions(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "old.log").write_text(DVC_LOG)
    (tmp_path / "new.log").write_text(JOBS_LOG)
    assert speed.main(["collect", "--out", str(tmp_path), "--baseline", "new", "--save", str(tmp_path / "s.json")]) == 0
    saved = yaml.safe_load((tmp_path / "s.json").read_text())
    assert saved["runs"]["new"]["fraction_of_baseline"] == 1.0
    assert saved["runs"]["old"]["fraction_of_baseline"] == pytest.approx(815.5 / 1311.0, abs=1e-3)
    assert "| **total** |" in capsys.readouterr().out
    assert speed.main(["collect", "--out", str(tmp_path), "--baseline", "absent"]) == 2


def test_speed_profile_is_the_c70887f_default_in_todays_schema() -> None:
    """Every key params.yaml had at c70887f keeps its value in params/speed-k4.yaml (the side-by-side's 'same
    settings'); the only keys gone are the two that were renamed or replaced since."""
    shown = subprocess.run(["git", "show", "c70887f:params.yaml"], cwd=REPO, capture_output=True, text=True)
    if shown.returncode != 0:
        pytest.skip("c70887f is not in this clone's history (shallow clone)")

    def flat(d: dict, prefix: str = "") -> dict:
        out: dict = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    old, new = flat(yaml.safe_load(shown.stdout)), flat(yaml.safe_load((REPO / "params" / "speed-k4.yaml").read_text()))
    changed = {k for k in old if old[k] != new.get(k, "<absent>")}
    assert changed == {"analysis.lipschitz_delta", "evaluate.bootstrap"}
