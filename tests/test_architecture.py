"""The layout contracts: imports point one way, stage name = CLI command = module name, dvc.yaml agrees with
paths.py and config.py, and the CLI answers `--help` without the heavy libraries."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO_ROOT
from typer.main import get_command

from ddmbench.cli import app
from ddmbench.config import Config
from ddmbench.paths import Paths

PACKAGE = REPO_ROOT / "ddmbench"
HEAVY = ("lightning", "pytorch_lightning", "mlflow", "torchmetrics", "typer", "rich", "dvc")
# research-style cores: arrays/tensors in, arrays/tensors out; no training, tracking, CLI or stages
CORE = ("flow", "policies", "solvers", "cluster", "field", "sampling", "nets")
PLAIN = ("flow", "policies", "solvers", "cluster")  # import only torch / numpy / scikit-learn


def _imports(module: str) -> set[str]:
    """Every module name imported anywhere in ddmbench/<module>.py (top level or inside functions)."""
    tree = ast.parse((PACKAGE / f"{module.replace('.', '/')}.py").read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            if node.module == "ddmbench":
                names.update(f"ddmbench.{a.name}" for a in node.names)
    return names


@pytest.mark.parametrize("module", CORE)
def test_core_modules_do_not_reach_up(module: str) -> None:
    for name in _imports(module):
        root = name.split(".")[0]
        assert root not in HEAVY, f"ddmbench/{module}.py imports {name}"
        assert not name.startswith(("ddmbench.stages", "ddmbench.cli", "ddmbench.tracking", "ddmbench.training",
                                    "ddmbench.lit")), f"ddmbench/{module}.py imports {name}"


@pytest.mark.parametrize("module", PLAIN)
def test_plain_algorithms_import_only_numerics(module: str) -> None:
    allowed = {"torch", "numpy", "sklearn", "__future__", "dataclasses", "collections", "typing", "re", "math"}
    for name in _imports(module):
        assert name.split(".")[0] in allowed, f"ddmbench/{module}.py imports {name}"


def test_field_needs_only_policies_from_the_package() -> None:
    assert {n for n in _imports("field") if n.startswith("ddmbench")} <= {"ddmbench.policies", "ddmbench.shapes"}


def test_solvers_know_nothing_of_experts_or_policies() -> None:
    assert not {n for n in _imports("solvers") if n.startswith("ddmbench")}


def test_nothing_below_the_cli_imports_it() -> None:
    for path in PACKAGE.rglob("*.py"):
        module = ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
        if module in ("cli", "__main__"):
            continue
        assert "ddmbench.cli" not in _imports(module), module


def test_cli_import_is_light() -> None:
    code = ("import sys, ddmbench.cli; "
            "print(','.join(m for m in ('lightning', 'mlflow', 'torchmetrics', 'sklearn') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"`import ddmbench.cli` loads {out.stdout.strip()}"


# ----------------------------------------------------------------------------------------------
# dvc.yaml <-> CLI <-> stages <-> paths <-> config
# ----------------------------------------------------------------------------------------------

DVC = REPO_ROOT / "dvc.yaml"
STAGES = yaml.safe_load(DVC.read_text())["stages"] if DVC.exists() else {}
COMMANDS = set(get_command(app).commands)  # type: ignore[attr-defined]


def _body(stage: dict) -> dict:
    return stage.get("do", stage)


def _paths_in(entries: list) -> list[str]:
    return [next(iter(e)) if isinstance(e, dict) else e for e in entries or []]


def test_every_stage_module_has_a_command() -> None:
    modules = {p.stem for p in (PACKAGE / "stages").glob("*.py")} - {"__init__", "pipeline"}
    assert {m.replace("_", "-") for m in modules} <= COMMANDS


@pytest.mark.parametrize("name", sorted(STAGES))
def test_dvc_stage_is_the_command_of_the_same_name(name: str) -> None:
    body = _body(STAGES[name])
    assert body["cmd"].split()[:2] == ["ddmbench", name]
    assert name in COMMANDS
    assert f"ddmbench/stages/{name.replace('-', '_')}.py" in body["deps"]
    for dep in body["deps"]:
        if dep.startswith("ddmbench/"):
            assert (REPO_ROOT / dep).exists(), f"{name}: dependency {dep} does not exist"


@pytest.mark.parametrize("name", sorted(STAGES))
def test_dvc_params_exist_in_config(name: str) -> None:
    for key in _body(STAGES[name]).get("params", []):
        model: type = Config
        for part in key.split("."):
            assert part in model.model_fields, f"{name}: params key '{key}' is not in Config"
            model = model.model_fields[part].annotation
    for field in ("experts", "policies"):  # the foreach lists come from params.yaml
        assert field in Config.model_fields


def test_dvc_outputs_are_where_paths_says() -> None:
    root = Path("/r")
    p = Paths(root)
    rel = lambda path: str(path.relative_to(root))  # noqa: E731
    expected = {
        "prepare": {rel(p.dataset), rel(p.manifest)},
        "cluster": {rel(p.clusters), rel(p.cluster_metrics)},
        "train-evaluator": {rel(p.model("evaluator")), rel(p.model_metrics("evaluator"))},
        "train-router": {rel(p.model("router")), rel(p.model_metrics("router"))},
        "train-monolith": {rel(p.model("monolith")), rel(p.model_metrics("monolith"))},
        "train-expert": {rel(p.expert(7)), rel(p.expert_metrics(7))},
        "sample": {rel(p.samples("top-2")), rel(p.sample_metrics("top-2"))},
        "evaluate": {rel(p.eval_metrics("top-2")), rel(p.quality("top-2"))},
    }
    for name, outputs in expected.items():
        body = _body(STAGES[name])
        declared = {x.replace("${item}", "7" if name == "train-expert" else "top-2")
                    for x in _paths_in(body.get("outs")) + _paths_in(body.get("metrics"))}
        assert declared == outputs, name
    assert rel(p.report_md) in _paths_in(_body(STAGES["report"]).get("outs"))


def test_no_stage_owns_the_mlflow_store() -> None:
    for name, stage in STAGES.items():
        body = _body(stage)
        for out in _paths_in(body.get("outs")) + _paths_in(body.get("metrics")):
            assert not out.startswith(("mlflow.db", "mlruns")), name
    assert set(STAGES) >= {"prepare", "cluster", "train-expert", "train-router", "train-evaluator", "train-monolith",
                           "sample", "evaluate", "report"}


def test_foreach_loops_over_params_lists() -> None:
    assert STAGES["train-expert"]["foreach"] == "${experts}"
    assert STAGES["sample"]["foreach"] == STAGES["evaluate"]["foreach"] == "${policies}"
