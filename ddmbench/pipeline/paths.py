"""The one place artefact paths are spelled. Everything is relative to the repo root (where params.yaml is)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Paths:
    root: Path

    # prepare
    @property
    def dataset(self) -> Path:
        return self.root / "outputs" / "prepare" / "dataset.pt"

    @property
    def manifest(self) -> Path:
        return self.root / "outputs" / "prepare" / "manifest.json"

    # cluster
    @property
    def clusters(self) -> Path:
        return self.root / "outputs" / "cluster" / "clusters.pt"

    @property
    def cluster_metrics(self) -> Path:
        return self.root / "metrics" / "cluster.json"

    # training
    @property
    def ddm(self) -> Path:
        """The DDM the sampling stages read: the models trained here, or the record of the imported one."""
        return self.root / "outputs" / "ddm"

    def expert(self, k: int) -> Path:
        return self.ddm / "experts" / f"expert-{k}.pt"

    @property
    def ddm_metrics(self) -> Path:
        """The metrics of the DDM's making: its training stages', or the import's."""
        return self.root / "metrics" / "ddm"

    def expert_metrics(self, k: int) -> Path:
        return self.ddm_metrics / "experts" / f"expert-{k}.json"

    def model(self, name: str) -> Path:
        """name in {router, monolith} (parts of the DDM, under ``ddm``) or evaluator (the measuring instrument)."""
        return (self.root / "outputs" if name == "evaluator" else self.ddm) / f"{name}.pt"

    @property
    def imported(self) -> Path:
        """What `import-ddm` read: the folder, its manifest's declarations and the SHA-256 of every file."""
        return self.ddm / "imported.json"

    @property
    def import_metrics(self) -> Path:
        return self.ddm_metrics / "import.json"

    def model_metrics(self, name: str) -> Path:
        return (self.root / "metrics" if name == "evaluator" else self.ddm_metrics) / f"{name}.json"

    # the real set's evaluator features, extracted once (stage `features`)
    @property
    def real_features(self) -> Path:
        return self.root / "outputs" / "features" / "real-test.pt"

    # sampling and evaluation, one folder per policy label
    def samples(self, label: str) -> Path:
        return self.root / "outputs" / "samples" / f"{label}.pt"

    def sample_metrics(self, label: str) -> Path:
        return self.root / "metrics" / "sample" / f"{label}.json"

    def eval_metrics(self, label: str) -> Path:
        return self.root / "metrics" / "evaluate" / f"{label}.json"

    def quality(self, label: str) -> Path:
        """Per-sample quality of one policy's samples (evaluator confidence, distance to the nearest real feature,
        evaluator features)."""
        return self.root / "outputs" / "quality" / f"{label}.pt"

    # analyses
    @property
    def expert_accuracy(self) -> Path:
        return self.root / "metrics" / "expert_accuracy.json"

    @property
    def router_calibration(self) -> Path:
        """Router calibration and the exact posterior p* by t (`router-calibration`)."""
        return self.root / "metrics" / "router_calibration.json"

    def analysis_metrics(self, label: str) -> Path:
        return self.root / "metrics" / "analyze" / f"{label}.json"

    def analysis_values(self, label: str) -> Path:
        """Per-seed values of one policy's analyses (amplification per eps, convergence error, Lipschitz)."""
        return self.root / "outputs" / "analysis" / f"{label}.pt"

    @property
    def contrast_metrics(self) -> Path:
        """Paired contrasts of every policy against the full ensemble."""
        return self.root / "metrics" / "contrast.json"

    def curves(self, label: str) -> Path:
        """Per-t curves of one policy's analyses (a DVC plots file)."""
        return self.root / "plots" / "curves" / f"{label}.json"

    # report
    @property
    def reports(self) -> Path:
        return self.root / "reports"

    @property
    def report_md(self) -> Path:
        return self.reports / "report.md"

    @property
    def report_html(self) -> Path:
        return self.reports / "report.html"

    def figure(self, name: str) -> Path:
        return self.reports / "figures" / f"{name}.png"

    def plot_data(self, name: str) -> Path:
        """A curve of every policy over t in long format (DVC `plots`)."""
        return self.reports / "plots" / f"{name}.json"

    def sample_grid(self, label: str) -> Path:
        return self.reports / "samples" / f"{label}.png"

    @property
    def mlflow_db(self) -> Path:
        return self.root / "mlflow.db"

    def resume(self, run_name: str) -> Path:
        """Resume checkpoints of one training stage (e.g. train-expert@3); not a DVC out, removed on success."""
        return self.root / "outputs" / "resume" / run_name

    @property
    def lightning_dir(self) -> Path:
        return self.root / "outputs" / "lightning"
