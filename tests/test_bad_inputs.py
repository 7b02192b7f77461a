"""Bad input through the real CLI: one table, one test.

Every case runs a `ddmbench` command in a private copy of a staged tiny project (data prepared, clusters,
checkpoints, one policy sampled and evaluated) and must give: a non-zero exit code, exactly one line on
stderr that names the problem (the key, file or value), no traceback, nothing on stdout, and no file
under the project created, modified or deleted (a snapshot of the whole tree before and after).
"""

from __future__ import annotations

import os
import pickle
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import Project, make_project, save_untrained_models
from typer.testing import CliRunner

from ddmbench.cli import app
from ddmbench.io import load_tensors, save_tensors, write_json
from ddmbench.models import nets
from ddmbench.models.checkpoints import save_weights
from ddmbench.pipeline import analyze, cluster, evaluate, features, prepare, sample
from ddmbench.sampling.policies import parse_policy

RUNNER = CliRunner(env={"NO_COLOR": "1", "COLUMNS": "200", "TYPER_USE_RICH": "0"})


class Payload:
    """Unpickling this runs a shell command that creates ``marker``: it must never happen."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return os.system, (f"touch '{self.marker}'",)


# ------------------------------------------------------------------------------------------------
# setups: each edits the private copy before the snapshot
# ------------------------------------------------------------------------------------------------

def _garbage(rel: str) -> Callable[[Project], None]:
    return lambda p: (p.root / rel).write_bytes(b"\x00garbage, not a torch file\xff" * 16)


def _truncate(rel: str) -> Callable[[Project], None]:
    def setup(p: Project) -> None:
        path = p.root / rel
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return setup


def _flip_byte(rel: str) -> Callable[[Project], None]:
    def setup(p: Project) -> None:
        path = p.root / rel
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    return setup


def _delete(rel: str) -> Callable[[Project], None]:
    return lambda p: (p.root / rel).unlink()


def _file_instead_of_folder(rel: str) -> Callable[[Project], None]:
    def setup(p: Project) -> None:
        shutil.rmtree(p.root / rel)
        (p.root / rel).write_text("a file where a folder should be\n")
    return setup


def _torch_pickle_payload(p: Project) -> None:
    """A checkpoint-shaped torch file whose metadata needs an arbitrary object unpickled."""
    torch.save({"state_dict": {}, "meta": Payload(p.root / "PWNED")}, p.root / "outputs" / "evaluator.pt")


def _retrained_evaluator(p: Project) -> None:
    """Another evaluator (other weights) than the one the real-set features were extracted with."""
    torch.manual_seed(123)
    save_weights(p.root / "outputs" / "evaluator.pt", nets.build_classifier("classifier-s", 10),
                 {"kind": "evaluator", "net": "classifier-s", "num_classes": 10})


def _plain_pickle_payload(p: Project) -> None:
    p.paths.expert(0).write_bytes(pickle.dumps(Payload(p.root / "PWNED")))


def _wrong_kind(p: Project) -> None:
    shutil.copy(p.paths.model("router"), p.paths.model("monolith"))


def _prepare_one_image(p: Project) -> None:
    p.update(data={"train_limit": 1})
    prepare.run(p.config(), p.paths)


def _dataset_without_labels(p: Project) -> None:
    blob = torch.load(p.paths.dataset, weights_only=True)
    del blob["train_y"]
    save_tensors(p.paths.dataset, blob)


def _truncate_params_before(line: str) -> Callable[[Project], None]:
    """params.yaml cut at the start of ``line`` (a file cut short by a full disk or an interrupted copy)."""
    def setup(p: Project) -> None:
        text = p.params.read_text()
        p.params.write_text(text[:text.index(f"\n{line}") + 1])
    return setup


def _copy_params(name: str) -> Callable[[Project], None]:
    return lambda p: shutil.copy(p.params, p.root / name)


def _malformed_baseline(p: Project) -> None:
    write_json(p.root / "baseline.json", {"format": 2, "values": {"evaluate/full.json:fid": "forty"},
                                          "constants": {}, "contrasts": {}})


def _old_baseline(p: Project) -> None:
    write_json(p.root / "baseline.json", {"why": "w", "metrics": {"evaluate/full.json:fid": {"value": 40.0}}})


# ------------------------------------------------------------------------------------------------
# the table
# ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    id: str
    args: list[str]                      # after `ddmbench`; `--params params.yaml` is added to stage commands
    needles: tuple[str, ...]             # each must appear in the one error line
    params: dict[str, Any] = field(default_factory=dict)   # deep-merged into params.yaml
    raw_params: str | None = None        # params.yaml written verbatim instead
    setup: Callable[[Project], None] | None = None
    with_params: bool = True


def _quality_without_features(p: Project) -> None:
    path = p.root / "outputs/quality/full.pt"
    quality = load_tensors(path, "evaluate")
    save_tensors(path, {k: v for k, v in quality.items() if k != "features"})


CASES = [
    # params.yaml: keys, types, ranges, cross-checks
    Case("unknown-top-level-key", ["cluster"], ("unknown key 'sed'", "allowed keys"), params={"sed": 1}),
    Case("unknown-nested-key", ["sample", "--policy", "full"], ("sample.nfe", "nfe_steps"),
         params={"sample": {"nfe": 5}}),
    Case("wrong-type-int", ["train-expert", "--expert", "0"], ("expert.steps", "'many'"),
         params={"expert": {"steps": "many"}}),
    Case("wrong-type-list", ["report"], ("policies", "list"), params={"policies": "full"}),
    Case("wrong-type-bool", ["prepare"], ("tracking.enabled", "'sometimes'"),
         params={"tracking": {"enabled": "sometimes"}}),
    Case("negative-sample-n", ["sample", "--policy", "full"], ("sample.n", "-5"), params={"sample": {"n": -5}}),
    Case("zero-batch-size", ["train-expert", "--expert", "0"], ("expert.batch_size", "0"),
         params={"expert": {"batch_size": 0}}),
    Case("zero-k", ["cluster"], ("cluster.k", "0"), params={"cluster": {"k": 0}}),
    Case("negative-train-limit", ["prepare"], ("data.train_limit", "-1"), params={"data": {"train_limit": -1}}),
    Case("zero-devices", ["train-router"], ("trainer.devices", "0"), params={"trainer": {"devices": 0}}),
    Case("k-larger-than-data", ["cluster"], ("cluster.k=2", "training set (1 images)"), setup=_prepare_one_image),
    Case("experts-do-not-match-k", ["train-expert", "--expert", "0"], ("experts must list 0..1", "[0, 2]"),
         params={"experts": [0, 2]}),
    Case("top-k-larger-than-K-in-params", ["report"], ("top-3", "k <= number of experts (2)"),
         params={"policies": ["top-3"]}),
    Case("sample-k-larger-than-K-on-cli", ["evaluate", "--policy", "sample-3"], ("--policy", "number of experts (2)")),
    Case("unknown-policy-in-params", ["cluster"], ("policies", "'bogus'"), params={"policies": ["bogus"]}),
    Case("unknown-policy-on-cli", ["evaluate", "--policy", "best"], ("--policy", "'best'")),
    Case("unknown-dataset", ["prepare"], ("data.dataset", "'mnist', 'fashion-mnist' or 'cifar10'", "'cifar100'"),
         params={"data": {"dataset": "cifar100"}}),
    Case("unknown-data-source", ["prepare"], ("data.sources", "'ftp'"), params={"data": {"sources": ["ftp"]}}),
    Case("nan-learning-rate", ["train-expert", "--expert", "0"], ("expert.lr", "nan"),
         params={"expert": {"lr": float("nan")}}),
    Case("inf-weight-decay", ["train-router"], ("router.weight_decay", "finite", "inf"),
         params={"router": {"weight_decay": float("inf")}}),
    Case("analysis-n-larger-than-samples", ["analyze", "--policy", "full"], ("analysis.n=100", "sample.n=32"),
         params={"analysis": {"n": 100}}),
    Case("analysis-eps-not-positive", ["analyze", "--policy", "full"], ("analysis.eps", "positive"),
         params={"analysis": {"eps": [0.1, -1.0]}}),
    Case("kid-subset-larger-than-samples", ["evaluate", "--policy", "full"], ("evaluate.kid_subset_size=100", "sample.n=32"),
         params={"evaluate": {"kid_subset_size": 100}}),
    Case("tracking-uri-without-scheme", ["prepare"], ("tracking.uri", "'mlruns'", "sqlite:///"),
         params={"tracking": {"enabled": True, "uri": "mlruns"}}),
    Case("malformed-yaml", ["cluster"], ("params.yaml", "not valid YAML at line"), raw_params="seed: 0\ncluster: [k: 2\n"),
    Case("params-not-a-mapping", ["prepare"], ("params.yaml", "expected a mapping", "list"), raw_params="- seed\n- 0\n"),
    Case("missing-params-file", ["cluster", "--params", "nope.yaml"], ("nope.yaml", "not found"), with_params=False),
    Case("empty-params-file", ["cluster"], ("params.yaml", "the params file is empty"), raw_params=""),
    Case("params-file-of-comments-only", ["prepare"], ("params.yaml", "empty"), raw_params="# emptied by mistake\n"),
    Case("truncated-params-file", ["train-router"], ("params.yaml", "missing top-level key(s) sample, policies",
                                                     "a truncated file?"), setup=_truncate_params_before("sample:")),
    Case("truncated-params-file-mid-line", ["cluster"], ("params.yaml", "not valid YAML at line"),
         raw_params="seed: 0\ncluster:\n  k: [2, \n"),
    Case("nan-float-timeout", ["prepare"], ("data.download_timeout_s", "finite number", "nan"),
         params={"data": {"download_timeout_s": float("nan")}}),
    Case("minus-inf-ema-decay", ["train-expert", "--expert", "0"], ("expert.ema_decay", "finite number", "-inf"),
         params={"expert": {"ema_decay": float("-inf")}}),
    Case("inf-in-a-float-list", ["analyze", "--policy", "full"], ("analysis.eps.1", "finite number", "inf"),
         params={"analysis": {"eps": [0.1, float("inf")]}}),
    Case("nan-jump-delta", ["analyze", "--policy", "full"], ("analysis.jump_delta", "nan"),
         params={"analysis": {"jump_delta": float("nan")}}),
    Case("run-with-another-params-file", ["run", "--policy", "full", "--params", "other.yaml"],
         ("--params other.yaml", "reads params.yaml", "cp other.yaml params.yaml"), setup=_copy_params("other.yaml"),
         with_params=False),
    Case("run-outside-a-dvc-project", ["run", "--policy", "full"], ("no dvc.yaml", "repo root")),
    Case("missing-checksum-file", ["prepare"], ("none.sha256", "data.checksums"),
         params={"data": {"checksums": "data/none.sha256"}}),
    # dataset files
    Case("truncated-dataset-file", ["prepare"], ("train-images-idx3-ubyte", "SHA-256 mismatch"),
         setup=_truncate("data/MNIST/raw/train-images-idx3-ubyte")),
    Case("tampered-dataset-file", ["prepare"], ("t10k-labels-idx1-ubyte", "SHA-256 mismatch"),
         setup=_flip_byte("data/MNIST/raw/t10k-labels-idx1-ubyte")),
    Case("missing-dataset-file", ["prepare"], ("could not obtain MNIST", "MNIST/raw"),
         setup=_delete("data/MNIST/raw/train-labels-idx1-ubyte")),
    Case("corrupt-prepared-dataset", ["cluster"], ("dataset.pt", "cannot be loaded safely", "ddmbench prepare"),
         setup=_garbage("outputs/prepare/dataset.pt")),
    Case("prepared-dataset-without-labels", ["train-router"], ("dataset.pt", "'train_y'"), setup=_dataset_without_labels),
    # checkpoints and samples
    Case("missing-checkpoint", ["sample", "--policy", "full"], ("expert-1.pt is missing", "train-expert --expert 1"),
         setup=_delete("outputs/ddm/experts/expert-1.pt")),
    Case("garbage-checkpoint", ["sample", "--policy", "full"], ("router.pt", "cannot be loaded safely"),
         setup=_garbage("outputs/ddm/router.pt")),
    Case("truncated-checkpoint", ["sample", "--policy", "top-1"], ("expert-0.pt", "cannot be loaded safely"),
         setup=_truncate("outputs/ddm/experts/expert-0.pt")),
    Case("checkpoint-needing-arbitrary-unpickling", ["evaluate", "--policy", "full"],
         ("evaluator.pt", "cannot be loaded safely"), setup=_torch_pickle_payload),
    Case("plain-pickle-as-checkpoint", ["sample", "--policy", "full"], ("expert-0.pt", "cannot be loaded safely"),
         setup=_plain_pickle_payload),
    Case("checkpoint-of-another-kind", ["sample", "--policy", "monolith"], ("monolith.pt", "not a monolith checkpoint"),
         params={"policies": ["full", "monolith"]}, setup=_wrong_kind),
    Case("corrupt-samples-for-evaluate", ["evaluate", "--policy", "full"], ("samples/full.pt", "cannot be loaded"),
         setup=_garbage("outputs/samples/full.pt")),
    Case("features-of-another-evaluator", ["evaluate", "--policy", "full"],
         ("real-test.pt was extracted by evaluator", "re-run `ddmbench features`"), setup=_retrained_evaluator),
    Case("corrupt-samples-for-report", ["report"], ("samples/full.pt", "cannot be loaded"),
         setup=_garbage("outputs/samples/full.pt")),
    # paired contrasts
    Case("contrast-of-an-unevaluated-policy", ["contrast"], ("quality/top-1.pt", "ddmbench evaluate --policy top-1"),
         params={"policies": ["full", "top-1"]}),
    Case("contrast-of-quality-without-features", ["contrast"], ("quality/full.pt", "per-sample features"),
         setup=_quality_without_features),
    Case("separation-of-full-with-itself", ["separation", "--policy", "full"], ("full with itself", "--policy top-2")),
    Case("separation-of-an-unanalyzed-policy", ["separation", "--policy", "top-1"],
         ("quality/top-1.pt", "ddmbench evaluate --policy top-1"), params={"policies": ["full", "top-1"]}),
    # output locations that cannot be written
    Case("samples-folder-is-a-file", ["sample", "--policy", "full"], ("outputs/samples", "writable"),
         setup=_file_instead_of_folder("outputs/samples")),
    Case("metrics-folder-is-a-file", ["sample", "--policy", "full"], ("metrics/sample", "writable"),
         setup=_file_instead_of_folder("metrics/sample")),
    Case("cluster-metrics-folder-is-a-file", ["cluster"], ("metrics", "writable"),
         setup=_file_instead_of_folder("metrics")),
    # regression commands
    Case("compare-missing-metrics-folder", ["compare", "no-metrics", "baseline.json"], ("no-metrics", "not a metrics folder"),
         with_params=False),
    Case("compare-malformed-baseline", ["compare", "metrics", "baseline.json"], ("baseline.json is a malformed baseline",),
         setup=_malformed_baseline, with_params=False),
    Case("compare-old-format-baseline", ["compare", "metrics", "baseline.json"],
         ("baseline.json is an old-format baseline", "ddmbench baseline --why"), setup=_old_baseline, with_params=False),
    Case("spread-of-one-run", ["spread", "metrics", "--out", "spread.json"], ("at least 2 runs",), with_params=False),
]


# ------------------------------------------------------------------------------------------------
# the staged project and the test
# ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory) -> Project:
    """prepare + cluster, untrained but well-formed checkpoints, and `full` sampled and evaluated (~2 s)."""
    project = make_project(tmp_path_factory.mktemp("bad-inputs") / "repo", policies=["full"])
    cfg, paths = project.config(), project.paths
    prepare.run(cfg, paths)
    cluster.run(cfg, paths)
    save_untrained_models(cfg, paths, monolith=True, evaluator=True)
    features.run(cfg, paths)
    sample.run(cfg, paths, parse_policy("full"))
    evaluate.run(cfg, paths, parse_policy("full"))
    analyze.run(cfg, paths, parse_policy("full"))
    return project


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under root: relative path -> (size, mtime_ns)."""
    return {p.relative_to(root).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in root.rglob("*") if p.is_file()}


def test_table_is_big_and_ids_are_unique() -> None:
    assert len(CASES) >= 25 and len({c.id for c in CASES}) == len(CASES)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, staged: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "repo"
    shutil.copytree(staged.root, root)
    project = Project(root, staged.raw)
    if case.params:
        project.update(**case.params)
    if case.raw_params is not None:
        project.params.write_text(case.raw_params)
    if case.setup is not None:
        case.setup(project)
    before = snapshot(root)
    monkeypatch.chdir(root)

    result = RUNNER.invoke(app, [*case.args, *(["--params", "params.yaml"] if case.with_params else [])])

    assert result.exit_code not in (0, None), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.stdout + result.stderr
    assert result.stdout == "", result.stdout
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in case.needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    after = snapshot(root)
    assert after == before, {"new": sorted(set(after) - set(before)), "gone": sorted(set(before) - set(after)),
                             "changed": sorted(k for k in set(after) & set(before) if after[k] != before[k])}


def test_prepare_reads_only_the_verified_raw_files(project: Project) -> None:
    """torchvision's MNIST class prefers a legacy MNIST/processed/*.pt over the raw files; ddmbench must not."""
    processed = project.root / "data" / "MNIST" / "processed"
    processed.mkdir(parents=True)
    fake = (torch.zeros(5, 28, 28, dtype=torch.uint8), torch.zeros(5, dtype=torch.long))
    for name in ("training.pt", "test.pt"):
        torch.save(fake, processed / name)
    manifest = prepare.run(project.config(), project.paths)
    assert manifest["n_train"] == 240 and manifest["n_test"] == 80  # the raw files, not the 5 fake images
    assert load_tensors(project.paths.dataset, "x")["train_x"].float().mean() > 0
