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
from ddmbench.pipeline.paths import Paths

PACKAGE = REPO_ROOT / "ddmbench"
HEAVY = ("lightning", "pytorch_lightning", "mlflow", "torchmetrics", "typer", "rich", "dvc")
# the library: arrays and models in, arrays and models out; it never imports the pipeline, the tools or the CLI
LIBRARY = ("data", "cluster", "models", "train", "sampling", "evaluation", "analysis", "report", "ddm")
SHARED = ("config", "errors", "io", "console", "hardware")  # top-level modules every layer may import
# research-style cores: tensors in, tensors out; no training, tracking or stages
CORE = ("sampling.flow", "sampling.policies", "sampling.solvers", "sampling.field", "sampling.sampler",
        "cluster.partition", "models.nets")
PLAIN = ("sampling.flow", "sampling.policies", "sampling.solvers", "cluster.partition")  # torch / numpy / sklearn only
MAX_MODULE_LINES = 400


def _modules() -> list[str]:
    """Every module of the package, dotted below ``ddmbench`` (``sampling.field``, ``cli``, ...)."""
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        out.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return [m for m in out if m]


def _file(module: str) -> Path:
    path = PACKAGE / f"{module.replace('.', '/')}.py"
    return path if path.exists() else PACKAGE / module.replace(".", "/") / "__init__.py"


def _imports(module: str) -> set[str]:
    """Every ddmbench module name imported anywhere in ``module`` (top level or inside functions), dotted from
    ``ddmbench``; ``from ddmbench.x import y`` counts ``ddmbench.x.y`` too when ``y`` is a module."""
    tree = ast.parse(_file(module).read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            if node.module.startswith("ddmbench"):
                for a in node.names:
                    sub = f"{node.module}.{a.name}"
                    if _file(sub.removeprefix("ddmbench.")).exists():
                        names.add(sub)
    return names


def _layer(name: str) -> str:
    """``ddmbench.sampling.field`` -> ``sampling``; non-ddmbench names -> ''."""
    parts = name.split(".")
    return parts[1] if parts[0] == "ddmbench" and len(parts) > 1 else ""


STAGE_MODULES = {f"pipeline.{p.stem}" for p in (PACKAGE / "pipeline").glob("*.py")} & {
    f"pipeline.{name.replace('-', '_')}" for name in (yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]
                                                      if (REPO_ROOT / "dvc.yaml").exists() else {})}


@pytest.mark.parametrize("module", [m for m in _modules() if m.split(".")[0] in LIBRARY + SHARED])
def test_the_library_never_imports_pipeline_tools_or_cli(module: str) -> None:
    for name in _imports(module):
        assert _layer(name) not in ("pipeline", "tools", "cli"), f"ddmbench/{module} imports {name}"


@pytest.mark.parametrize("module", [m for m in _modules() if m.startswith("pipeline")])
def test_the_pipeline_never_imports_tools_or_cli(module: str) -> None:
    for name in _imports(module):
        assert _layer(name) not in ("tools", "cli"), f"ddmbench/{module} imports {name}"


@pytest.mark.parametrize("module", sorted(STAGE_MODULES))
def test_a_stage_never_imports_another_stage(module: str) -> None:
    others = {f"ddmbench.{m}" for m in STAGE_MODULES - {module}}
    assert not (_imports(module) & others), f"ddmbench/{module} imports {sorted(_imports(module) & others)}"


def test_the_import_direction_test_can_fail() -> None:
    # the checks above see both import forms, or they would pass vacuously
    assert "ddmbench.pipeline.paths" in _imports("pipeline.sample")
    assert "ddmbench.sampling.flow" in _imports("pipeline.flow_training")


@pytest.mark.parametrize("module", CORE)
def test_core_modules_do_not_reach_up(module: str) -> None:
    for name in _imports(module):
        assert name.split(".")[0] not in HEAVY, f"ddmbench/{module} imports {name}"
        assert _layer(name) not in ("pipeline", "tools", "cli", "train"), f"ddmbench/{module} imports {name}"


@pytest.mark.parametrize("module", PLAIN)
def test_plain_algorithms_import_only_numerics(module: str) -> None:
    allowed = {"torch", "numpy", "sklearn", "__future__", "dataclasses", "collections", "typing", "re", "math",
               "hashlib", "struct"}
    for name in _imports(module):
        assert name.split(".")[0] in allowed or name == "ddmbench.streams", f"ddmbench/{module} imports {name}"


def test_streams_is_pure_torch() -> None:
    # the one module that names every random stream: every layer may import it, it imports nothing of ours
    for name in _imports("streams"):
        assert name.split(".")[0] in ("torch", "__future__", "collections"), f"ddmbench/streams imports {name}"


def test_field_needs_only_policies_from_the_package() -> None:
    assert {n for n in _imports("sampling.field") if n.startswith("ddmbench")} <= {
        "ddmbench.sampling", "ddmbench.sampling.policies", "ddmbench.data.shapes", "ddmbench.data"}


def test_solvers_know_nothing_of_experts_or_policies() -> None:
    assert not {n for n in _imports("sampling.solvers") if n.startswith("ddmbench")}


@pytest.mark.parametrize("module", _modules())
def test_modules_stay_small(module: str) -> None:
    lines = len(_file(module).read_text().splitlines())
    assert lines <= MAX_MODULE_LINES, f"ddmbench/{module} has {lines} lines; split it (limit {MAX_MODULE_LINES})"


@pytest.mark.slow
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
    assert STAGE_MODULES and {m.removeprefix("pipeline.").replace("_", "-") for m in STAGE_MODULES} <= COMMANDS


def _code_deps(stage: str) -> set[str]:
    """What a stage's code depends on, from its imports: its module, the pipeline support modules it uses
    (not paths/tracking), and each library module it reaches transitively, as the whole folder when the stage
    reaches every module of it. The shared modules (config, errors, io, console) are not code deps."""
    own = f"ddmbench.pipeline.{stage.replace('-', '_')}"
    seen: set[str] = set()
    todo = [own]
    while todo:
        name = todo.pop()
        if name in seen or not name.startswith("ddmbench.") or not _file(name.removeprefix("ddmbench.")).exists():
            continue
        seen.add(name)
        if _layer(name) not in SHARED:
            todo.extend(_imports(name.removeprefix("ddmbench.")))
    deps = {f"ddmbench/pipeline/{stage.replace('-', '_')}.py"}
    for name in seen:
        parts = name.split(".")
        if len(parts) >= 3 and parts[1] in LIBRARY:
            every = {f"ddmbench.{parts[1]}.{q.stem}" for q in (PACKAGE / parts[1]).glob("*.py") if q.stem != "__init__"}
            deps.add(f"ddmbench/{parts[1]}" if every <= seen else name.replace(".", "/") + ".py")
        elif len(parts) == 3 and parts[1] == "pipeline" and parts[2] not in ("paths", "tracking"):
            deps.add(name.replace(".", "/") + ".py")
        elif name == "ddmbench.streams":  # seeds and draws: a change there changes every output it reaches
            deps.add("ddmbench/streams.py")
    return {d for d in deps if not any(d.startswith(f"{folder}/") for folder in deps if not folder.endswith(".py"))}


@pytest.mark.parametrize("name", sorted(STAGES))
def test_dvc_stage_is_the_command_of_the_same_name(name: str) -> None:
    body = _body(STAGES[name])
    assert body["cmd"].split()[:2] == ["ddmbench", name]
    assert name in COMMANDS
    declared = {d for d in _paths_in(body["deps"]) if d.startswith("ddmbench/")}
    for dep in declared:
        assert (REPO_ROOT / dep).exists(), f"{name}: dependency {dep} does not exist"
    # the code deps are exactly what the stage imports: a missing one leaves DVC blind to a code change,
    # an extra one re-runs the stage for nothing
    assert declared == _code_deps(name), f"{name}: dvc.yaml deps {sorted(declared)} != imports {sorted(_code_deps(name))}"


PROFILES = sorted([REPO_ROOT / "params.yaml", *(REPO_ROOT / "params").glob("*.yaml")])


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.name)
def test_every_key_dvc_reads_is_in_every_shipped_profile(profile: Path) -> None:
    """DVC refuses a stage whose params key is missing from params.yaml ("Parameters ... are missing"), so each
    profile a user copies to params.yaml must spell out every key a stage declares."""
    raw = yaml.safe_load(profile.read_text())
    for name, stage in STAGES.items():
        for key in _body(stage).get("params", []):
            node = raw
            for part in key.split("."):
                assert isinstance(node, dict) and part in node, f"{profile.name} lacks '{key}' (stage {name})"
                node = node[part]


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
        "import-ddm": {rel(p.imported), rel(p.import_metrics), rel(p.clusters), rel(p.cluster_metrics)},
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
    assert set(STAGES) >= {"prepare", "cluster", "import-ddm", "train-expert", "train-router", "train-evaluator",
                           "train-monolith", "sample", "evaluate", "report"}


def test_foreach_loops_over_params_lists() -> None:
    assert STAGES["train-expert"]["foreach"] == "${experts}"
    assert STAGES["sample"]["foreach"] == STAGES["evaluate"]["foreach"] == "${policies}"
