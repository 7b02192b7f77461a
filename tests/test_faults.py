"""Faults: a writer killed mid-write never leaves a truncated output; an unreachable MLflow only warns."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT, Project
from typer.testing import CliRunner

from ddmbench.cli import app
from ddmbench.io import load_tensors, remove_stale_temps, save_tensors, write_json
from ddmbench.tools.regression import flatten_metrics

# The child writes the real bytes of the output into the temp file, but only the first half, then says
# so and blocks: the parent kills it at a known point of the write (no sleep race).
CHILD = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    import torch
    import ddmbench.io as dio

    target, kind = Path(sys.argv[1]), sys.argv[2]

    def write_half_then_block(data: bytes, dest) -> None:
        with open(dest, "wb") as f:
            f.write(data[: len(data) // 2])
            f.flush()
            os.fsync(f.fileno())
        print("half written", dest, flush=True)
        sys.stdin.read()  # blocks until the parent kills us

    if kind == "tensors":
        real_save = torch.save

        def slow_save(obj, dest):
            import io
            buf = io.BytesIO()
            real_save(obj, buf)
            write_half_then_block(buf.getvalue(), dest)

        dio.torch.save = slow_save
        dio.save_tensors(target, {"x": torch.arange(200_000, dtype=torch.float32)})
    else:
        Path.write_text = lambda self, text, *a, **k: write_half_then_block(text.encode(), self)
        dio.write_json(target, {"values": list(range(50_000))})
""")


def _kill_mid_write(target: Path, kind: str) -> Path:
    """Run CHILD, wait until half the new bytes are in its temp file, SIGKILL it; return that temp."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(target), kind], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = child.stdout.readline()  # type: ignore[union-attr]
        assert line.startswith("half written"), line + child.stderr.read()  # type: ignore[union-attr]
        tmp = Path(line.split(" ", 2)[2].strip())
        assert tmp.parent == target.parent and tmp.stat().st_size > 0  # killed in the middle of a real write
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    return tmp


@pytest.mark.parametrize(("kind", "old"), [("tensors", False), ("json", True)],
                         ids=["tensors-no-output-yet", "json-over-old-output"])  # each child imports torch: ~5 s
@pytest.mark.slow
def test_writer_killed_mid_write_leaves_old_output_or_none(tmp_path: Path, kind: str, old: bool) -> None:
    folder = tmp_path / "metrics"
    target = folder / ("clusters.pt" if kind == "tensors" else "cluster.json")
    old_value = {"x": torch.zeros(3)} if kind == "tensors" else {"purity": 0.5}
    if old:
        (save_tensors if kind == "tensors" else write_json)(target, old_value)
    else:
        folder.mkdir()
    before = target.read_bytes() if old else None

    stale = _kill_mid_write(target, kind)

    assert stale.exists() and stale.name.startswith(f".{target.name}.") and stale.suffix == ".tmp"
    if old:
        assert target.read_bytes() == before  # the old output, byte for byte
        if kind == "tensors":
            assert torch.equal(load_tensors(target, "x")["x"], torch.zeros(3))
        else:
            # a stale temp is never read as an output: the metrics folder holds exactly the old file
            assert flatten_metrics(folder) == {"cluster.json:purity": 0.5}
    else:
        assert not target.exists()
    # the next write of the same output removes the dead writer's temp
    (save_tensors if kind == "tensors" else write_json)(target, old_value)
    assert not stale.exists()
    assert [p.name for p in folder.iterdir()] == [target.name]


def test_only_temps_of_dead_writers_are_removed(tmp_path: Path) -> None:
    target = tmp_path / "expert-0.pt"
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(done.stdout)
    live = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        dead = tmp_path / f".expert-0.pt.{dead_pid}.abc123.tmp"
        alive = tmp_path / f".expert-0.pt.{live.pid}.def456.tmp"
        other = tmp_path / f".expert-1.pt.{dead_pid}.abc123.tmp"  # another output's temp: not ours to judge
        for p in (dead, alive, other):
            p.write_bytes(b"partial")
        assert remove_stale_temps(target) == [dead]
        assert alive.exists() and other.exists()
    finally:
        live.kill()
        live.wait()


def reattach_closed_log_streams(monkeypatch: pytest.MonkeyPatch) -> None:
    """Libraries bind a log handler to the sys.stderr of their first import; in-process that may be the stream
    of an earlier CliRunner invoke, closed since, and logging then prints a "Logging error" traceback of its
    own. A harness artefact (one command per process in real use), so point such handlers at a live stream."""
    loggers = [logging.getLogger(), *(lg for lg in logging.Logger.manager.loggerDict.values()
                                      if isinstance(lg, logging.Logger))]
    for handler in (h for lg in loggers for h in lg.handlers):
        if isinstance(handler, logging.StreamHandler) and getattr(handler.stream, "closed", False):
            monkeypatch.setattr(handler, "stream", sys.__stderr__)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the socket closes: connections are refused


@pytest.mark.slow
def test_unreachable_mlflow_warns_once_and_keeps_the_metrics(project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    uri = f"http://127.0.0.1:{_closed_port()}"
    project.update(tracking={"enabled": True, "uri": uri})
    monkeypatch.chdir(project.root)
    runner = CliRunner(env={"NO_COLOR": "1", "COLUMNS": "200"})
    for command, metrics in (("prepare", project.paths.manifest),
                             ("train-evaluator", project.paths.model_metrics("evaluator"))):
        reattach_closed_log_streams(monkeypatch)
        start = time.monotonic()
        result = runner.invoke(app, [command, "--params", "params.yaml"])
        seconds = time.monotonic() - start
        assert result.exit_code == 0, result.output
        warnings = [ln for ln in result.stderr.splitlines() if ln.startswith("warning:")]
        assert len(warnings) == 1, result.stderr  # one line per command, not one per MLflow call
        assert uri in warnings[0] and "results are still in the metrics files" in warnings[0]
        assert "Traceback" not in result.output
        assert json.loads(metrics.read_text())  # the DVC metrics are written anyway
        assert seconds < 60, f"{command} took {seconds:.0f} s with MLflow unreachable"  # no retry back-off
    assert project.paths.model("evaluator").exists()
