"""The `ddmbench` command: help everywhere, and user errors as one `error:` line with exit code 2."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from conftest import Project
from typer.main import get_command
from typer.testing import CliRunner

from ddmbench.cli import app
from ddmbench.config import config_to_dict

COMMANDS = sorted(get_command(app).commands)  # type: ignore[attr-defined]
POLICY_COMMANDS = ("sample", "evaluate", "run")
STAGE_COMMANDS = ("prepare", "cluster", "train-expert", "train-router", "train-evaluator", "train-monolith",
                  "sample", "evaluate", "report", "run", "show-config")


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner(env={"NO_COLOR": "1", "COLUMNS": "200", "TYPER_USE_RICH": "0"})


def _one_error_line(output: str) -> str:
    assert "Traceback" not in output, output
    lines = [ln for ln in output.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(errors) == 1 and len(lines) == 1, f"expected exactly one 'error:' line, got {output!r}"
    return errors[0]


def test_stage_commands_are_registered() -> None:
    assert set(STAGE_COMMANDS) <= set(COMMANDS)


def test_app_help(runner: CliRunner) -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0, result.output
    for name in COMMANDS:
        assert name in result.output


@pytest.mark.parametrize("command", COMMANDS)
def test_subcommand_help(runner: CliRunner, command: str) -> None:
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0, result.output
    options = [opt for param in get_command(app).commands[command].params for opt in param.opts]  # type: ignore[attr-defined]
    for opt in options:
        assert opt in result.output, opt
    if command in STAGE_COMMANDS:
        assert "--params" in options
    if command in POLICY_COMMANDS:
        assert "--policy" in options
    if command == "train-expert":
        assert "--expert" in options


def test_unknown_key_is_one_error_line(runner: CliRunner, project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    project.update(expert={"stpes": 3})
    monkeypatch.chdir(project.root)
    result = runner.invoke(app, ["show-config", "--params", str(project.params)])
    assert result.exit_code == 2
    line = _one_error_line(result.output)
    assert "expert.stpes" in line and "allowed keys here:" in line and "steps" in line


@pytest.mark.parametrize("command", ["prepare", "cluster", "train-router", "report", "show-config"])
def test_bad_value_fails_every_stage_before_work(runner: CliRunner, project: Project, command: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    project.update(cluster={"k": 3})  # experts [0, 1] no longer match
    monkeypatch.chdir(project.root)
    result = runner.invoke(app, [command, "--params", str(project.params)])
    assert result.exit_code == 2
    assert "cluster.k=3" in _one_error_line(result.output)
    assert not (project.root / "outputs").exists()


def test_missing_params_file(runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["prepare", "--params", str(tmp_path / "missing.yaml")])
    assert result.exit_code == 2
    line = _one_error_line(result.output)
    assert "missing.yaml" in line and "not found" in line


@pytest.mark.parametrize("kind", ["directory", "binary"])
def test_unreadable_params_is_one_error_line(runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             kind: str) -> None:
    """`--params params/` (the profiles folder) or a non-text file: a user error, not a traceback."""
    monkeypatch.chdir(tmp_path)
    target = tmp_path / "params"
    if kind == "directory":
        target.mkdir()
    else:
        target.write_bytes(b"\xff\xfe\x00binary")
    result = runner.invoke(app, ["show-config", "--params", str(target)])
    assert result.exit_code == 2, result.output
    assert str(target) in _one_error_line(result.output)


def test_default_params_path_is_cwd(runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["cluster"])
    assert result.exit_code == 2
    assert "params.yaml" in _one_error_line(result.output)


def test_error_line_keeps_bracketed_text(runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Messages are printed through rich: text such as a folder named `[ci]` must not be eaten as markup."""
    monkeypatch.chdir(tmp_path)
    missing = tmp_path / "runs[ci]" / "params.yaml"
    result = runner.invoke(app, ["prepare", "--params", str(missing)])
    assert result.exit_code == 2
    assert str(missing) in _one_error_line(result.output)


def test_show_config_prints_resolved_config(runner: CliRunner, project: Project,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(project.root)
    result = runner.invoke(app, ["show-config", "--params", str(project.params)])
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(result.stdout) == config_to_dict(project.config())


def test_show_config_keeps_bracketed_values(runner: CliRunner, project: Project,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The resolved config is printed verbatim: a value such as `[red]mnist` is data, not rich markup."""
    project.update(tracking={"experiment": "[red]mnist"})
    monkeypatch.chdir(project.root)
    result = runner.invoke(app, ["show-config", "--params", str(project.params)])
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(result.stdout)["tracking"]["experiment"] == "[red]mnist"


@pytest.mark.parametrize(("args", "needle"), [
    (["--policy", "bogus"], "valid forms"),
    (["--policy", "top-3"], "k <= number of experts (2)"),
    (["--policy", "top", "--k", "5"], "k <= number of experts (2)"),
    (["--policy", "top"], "top-<k>"),
    (["--policy", "threshold", "--tau", "1.5"], "tau must be in [0, 1]"),
    (["--policy", "nucleus", "--p", "0.9", "--temperature", "0"], "temperature must be > 0"),
])
def test_bad_policy_option(runner: CliRunner, project: Project, monkeypatch: pytest.MonkeyPatch,
                           args: list[str], needle: str) -> None:
    monkeypatch.chdir(project.root)
    result = runner.invoke(app, ["sample", "--params", str(project.params), *args])
    assert result.exit_code == 2
    line = _one_error_line(result.output)
    assert line.startswith("error: --policy:") and needle in line
    assert not (project.root / "outputs").exists()


def test_missing_upstream_output_is_one_line(runner: CliRunner, project: Project,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(project.root)
    result = runner.invoke(app, ["cluster", "--params", str(project.params)])
    assert result.exit_code == 2
    line = _one_error_line(result.output)
    assert "dataset.pt is missing" in line and "ddmbench prepare" in line


def test_expert_not_in_experts(runner: CliRunner, project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(project.root)
    result = runner.invoke(app, ["train-expert", "--expert", "5", "--params", str(project.params)])
    assert result.exit_code == 2
    assert "expert 5" in _one_error_line(result.output)


def test_no_args_shows_help(runner: CliRunner) -> None:
    result = runner.invoke(app, [])
    assert result.exit_code == 2  # typer's no_args_is_help exits 2
    assert "prepare" in result.output


# ------------------------------------------------------------------------------------------------
# progress bars: optimizer steps with an ETA; none under --quiet or in CI
# ------------------------------------------------------------------------------------------------

BAR = "━"


@pytest.fixture
def prepared(project: Project, monkeypatch: pytest.MonkeyPatch) -> Project:
    from ddmbench.pipeline import prepare

    monkeypatch.setenv("DDMBENCH_QUIET", "0")  # undone after the test: --quiet sets it to 1 for child processes
    monkeypatch.delenv("CI", raising=False)
    project.update(evaluator={"steps": 7}, trainer={"checkpoint_every_n_steps": 3})
    prepare.run(project.config(), project.paths)
    return project


@pytest.mark.slow
def test_training_bar_counts_steps_with_an_eta(prepared: Project) -> None:
    from conftest import run_cli

    output = run_cli(prepared.root, "train-evaluator").output
    bar = next((ln for ln in output.splitlines() if BAR in ln), None)
    assert bar is not None, output
    assert bar.lstrip().startswith("train-evaluator step") and "7/7" in bar and "Epoch" not in output
    assert re.search(r"\d+:\d\d:\d\d • \d+:\d\d:\d\d", bar), bar       # elapsed • remaining (the ETA)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["--quiet", "CI=true"])
def test_quiet_or_ci_prints_no_bar(prepared: Project, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
                                   how: str) -> None:
    from conftest import run_cli

    if how == "CI=true":
        monkeypatch.setenv("CI", "true")
    args = ["--quiet"] if how == "--quiet" else []
    output = run_cli(prepared.root, *args, "train-evaluator").output
    assert BAR not in output and " step" not in output, output
    assert (prepared.root / "outputs" / "evaluator.pt").exists()
    from ddmbench.console import progress

    capsys.readouterr()
    with progress("anything", 3) as advance:  # sampling, analyses, expert accuracy
        advance(3)
    assert BAR not in capsys.readouterr().err


def test_console_progress_shows_i_of_n_and_eta(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    from ddmbench.console import bars_enabled, progress

    for value, on in (("", True), ("0", True), ("false", True), ("true", False), ("1", False)):
        monkeypatch.setenv("CI", value)
        monkeypatch.setenv("DDMBENCH_QUIET", "0")
        assert bars_enabled() is on, value
    monkeypatch.setenv("CI", "")
    with progress("sample full", 5) as advance:
        for _ in range(5):
            advance(1)
    line = next(ln for ln in capsys.readouterr().err.splitlines() if BAR in ln)
    assert line.startswith("sample full") and "5/5" in line and re.search(r"\d:\d\d:\d\d", line)


def test_resumed_training_bar_starts_at_its_step() -> None:
    """A fit resumed at step 40 of 100 shows 40/100 (the stock bar would count 0/60 batches of this restart)."""
    from types import SimpleNamespace

    from rich.progress import Progress

    from ddmbench.train.trainer import StepProgressBar

    bar = StepProgressBar("train-expert@0 step")
    bar._trainer = SimpleNamespace(global_step=40, max_steps=100)
    bar.progress = Progress(disable=True)
    assert bar.total_train_batches == 100 and bar._get_train_description(0) == "train-expert@0 step"
    task_id = bar._add_task(bar.total_train_batches, "train-expert@0 step")
    task = next(t for t in bar.progress.tasks if t.id == task_id)
    assert (task.completed, task.total, task.description) == (40, 100, "train-expert@0 step")
