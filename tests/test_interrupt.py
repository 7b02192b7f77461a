"""Real `dvc repro` processes: Ctrl-C mid-stage then a re-run loses nothing and leaves nothing stale; two
`dvc repro` in one folder, or `ddmbench run` during one, are refused instead of interleaving writes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import REPO_ROOT, Project, make_dvc_project, run_cli

from ddmbench.io import load_tensors


def _env() -> dict[str, str]:
    """The stage commands DVC starts import the code under test, without bars or analytics."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
            "DVC_NO_ANALYTICS": "1", "DDMBENCH_QUIET": "1", "OMP_NUM_THREADS": "1"}


def _dvc(root: Path, *args: str, **kwargs) -> subprocess.Popen:
    """`dvc ...` in its own process group, so that a signal reaches every process of it, as Ctrl-C does."""
    dvc = Path(sys.executable).parent / "dvc"
    return subprocess.Popen([str(dvc), *args], cwd=root, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True, preexec_fn=_terminal_sigint, **kwargs)


def _terminal_sigint() -> None:
    """In the child before exec: SIGINT as a terminal's process gets it (default action, not blocked). An ignored
    or blocked SIGINT is inherited across exec, and the test process may have one from an earlier test in it
    (e.g. a process pool's start-up blocks signals for a moment)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            pytest.fail(f"dvc ended (rc {proc.returncode}) before {path} appeared:\n{proc.stdout.read()}")
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"{path} did not appear within {timeout} s")
        time.sleep(0.05)


def _signal_masks(pgid: int) -> str:
    """One line per live process of group ``pgid``: pid, command, and the SigBlk/SigIgn/SigCgt masks from
    /proc (SIGINT, signal 2, is the value 0x2 in each mask); empty where /proc is missing."""
    lines = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            if os.getpgid(int(status.parent.name)) != pgid:
                continue
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line)
            cmd = (status.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:120]
        except (OSError, ValueError):
            continue  # the process ended meanwhile
        masks = " ".join(f"{k}={fields.get(k, '?').strip()}" for k in ("SigBlk", "SigIgn", "SigCgt"))
        lines.append(f"  pid {status.parent.name} {masks} {cmd}")
    return "\n".join(sorted(lines))


def _finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


@pytest.mark.slow
def test_ctrl_c_mid_training_then_repro_again_finishes_clean(tmp_path: Path) -> None:
    # Long enough to be interrupted after its first resume checkpoint (step 10), short to finish on the re-run.
    project = make_dvc_project(tmp_path / "repo", evaluator={"steps": 400, "batch_size": 8},
                               trainer={"checkpoint_every_n_steps": 10})
    paths = project.paths
    checkpoint = paths.resume("train-evaluator") / "last.ckpt"
    proc = _dvc(project.root, "repro", "train-evaluator")
    _wait_for(checkpoint, proc, timeout=240)
    masks = _signal_masks(proc.pid)  # read just before the signal: a lost Ctrl-C is then diagnosed, not guessed
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the whole foreground process group
    rc, out = _finish(proc)
    assert rc != 0, f"SIGINT did not stop the run; the group's signal masks before it:\n{masks}\n{out}"
    assert "failed to reproduce 'train-evaluator'" in out
    assert not paths.model("evaluator").exists() and checkpoint.exists()   # no half-written output; progress kept
    lock = yaml.safe_load((project.root / "dvc.lock").read_text())["stages"]
    assert "prepare" in lock and "train-evaluator" not in lock             # DVC recorded only what finished

    rc, out = _finish(_dvc(project.root, "repro", "train-evaluator"))
    assert rc == 0, out
    assert "Stage 'prepare' didn't change, skipping" in out and "Running stage 'train-evaluator'" in out
    metrics = json.loads(paths.model_metrics("evaluator").read_text())
    assert 10 <= metrics["resumed_from_step"] < 400                         # the interrupted work was not lost
    assert load_tensors(paths.model("evaluator"), "evaluator")["meta"]["kind"] == "evaluator"
    assert not paths.resume("train-evaluator").exists()                     # resume state removed once saved
    rc, out = _finish(_dvc(project.root, "status", "train-evaluator"))
    assert rc == 0 and "up to date" in out, out


def _sleeper(project: Project, seconds: float) -> Path:
    """A second dvc.yaml in the project whose one stage sleeps, then writes sub/out.txt."""
    sub = project.root / "sub"
    sub.mkdir()
    (sub / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"sleep": {
        "cmd": f"sleep {seconds} && echo done > out.txt", "outs": ["out.txt"]}}}))
    return sub / "out.txt"


@pytest.mark.slow
def test_two_dvc_repro_the_second_is_refused(tmp_path: Path) -> None:
    """DVC's own locks: the second `dvc repro` fails on the repo lock or on the running stage's outs (rwlock)."""
    project = make_dvc_project(tmp_path / "repo")
    out = _sleeper(project, 15)
    first = _dvc(project.root, "repro", "sub/dvc.yaml")
    _wait_for(project.root / ".dvc" / "tmp" / "rwlock", first, timeout=60)
    rc, second = _finish(_dvc(project.root, "repro", "sub/dvc.yaml"))
    assert rc != 0
    assert "is busy, it is being blocked by" in second or "Unable to acquire lock" in second, second
    assert f"(PID {first.pid})" in second or "Unable to acquire lock" in second
    rc, log = _finish(first)
    assert rc == 0, log
    assert out.read_text() == "done\n"
    rc, status = _finish(_dvc(project.root, "status", "sub/dvc.yaml"))
    assert "up to date" in status, status


@pytest.mark.slow
def test_ddmbench_run_during_dvc_repro_is_refused(tmp_path: Path) -> None:
    project = make_dvc_project(tmp_path / "repo")
    _sleeper(project, 120)
    proc = _dvc(project.root, "repro", "sub/dvc.yaml")
    _wait_for(project.root / ".dvc" / "tmp" / "rwlock", proc, timeout=60)
    try:
        result = run_cli(project.root, "run", "--policy", "full")
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        _finish(proc)
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert ("a DVC stage is running here" in lines[0] and f"pid {proc.pid}" in lines[0]) or "DVC is busy" in lines[0]
    assert not (project.root / "outputs").exists()


@pytest.mark.slow
def test_dvc_repro_during_ddmbench_run_is_refused_by_dvc(tmp_path: Path) -> None:
    """`ddmbench run` holds DVC's repo lock from start to end, so DVC itself refuses a `dvc repro` meanwhile."""
    from ddmbench.pipeline import run as pipeline

    project = make_dvc_project(tmp_path / "repo")
    out = _sleeper(project, 0)
    with pipeline.run_lock(project.root), pipeline.dvc_repo(project.root):
        rc, log = _finish(_dvc(project.root, "repro", "sub/dvc.yaml"))
    assert rc != 0 and "Unable to acquire lock" in log, log
    assert not out.exists()
