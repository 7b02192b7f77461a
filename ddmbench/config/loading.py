"""The root ``Config`` model and how a params file becomes one: parsing, one-line errors, completeness."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from ddmbench.config.sections import (
    CONTRAST_METRICS,
    AnalysisConfig,
    ClusterConfig,
    DataConfig,
    DDMConfig,
    EvaluateConfig,
    EvaluatorConfig,
    ExpertConfig,
    MonolithConfig,
    PosteriorConfig,
    ReportConfig,
    RouterConfig,
    SampleConfig,
    Section,
    TrackingConfig,
    TrainerConfig,
)
from ddmbench.errors import ConfigError
from ddmbench.sampling.policies import PolicySpec, parse_policy


class Config(Section):
    seed: int = Field(0, ge=0, description="Global seed.")
    data: DataConfig = DataConfig()
    ddm: DDMConfig = DDMConfig()
    cluster: ClusterConfig = ClusterConfig()
    experts: list[int] = Field([0, 1, 2, 3], description="Expert ids for the DVC foreach: 0..K-1 when the DDM is "
                                                         "trained here, [] when it is imported.")
    expert: ExpertConfig = ExpertConfig()
    router: RouterConfig = RouterConfig()
    evaluator: EvaluatorConfig = EvaluatorConfig()
    monolith: MonolithConfig = MonolithConfig()
    trainer: TrainerConfig = TrainerConfig()
    sample: SampleConfig = SampleConfig()
    policies: list[str] = Field(["monolith", "full", "top-1", "top-2"], min_length=1,
                                description="Routing policy labels sampled and evaluated by the pipeline.")
    evaluate: EvaluateConfig = EvaluateConfig()
    analysis: AnalysisConfig = AnalysisConfig()
    posterior: PosteriorConfig = PosteriorConfig()
    tracking: TrackingConfig = TrackingConfig()
    report: ReportConfig = ReportConfig()

    @field_validator("policies")
    @classmethod
    def _policies(cls, v: list[str]) -> list[str]:
        labels = [parse_policy(x).label for x in v]
        for given, label in zip(v, labels):
            if str(given) != label:  # DVC names stages and files after the spelling in params.yaml
                raise ValueError(f"write policy '{given}' as '{label}' (its canonical label)")
        if len(set(labels)) != len(labels):
            raise ValueError("contains a policy twice")
        return labels

    @model_validator(mode="after")
    def _cross_checks(self) -> Config:
        k = self.cluster.k
        if self.cluster.method == "two-stage" and self.cluster.fine_k < k:
            raise ValueError(f"cluster.fine_k={self.cluster.fine_k} must be at least cluster.k={k} for two-stage")
        if self.cluster.balance and self.cluster.method == "random":
            raise ValueError("cluster.balance=true with cluster.method=random: the random partition is already "
                             "balanced; set balance: false")
        if self.ddm.folder is None and sorted(self.experts) != list(range(k)):
            raise ValueError(f"experts must list 0..{k - 1} to match cluster.k={k}, got {self.experts}")
        if self.ddm.folder is not None:
            if self.experts:
                raise ValueError(f"experts must be [] when the DDM is imported (ddm.import), got {self.experts}")
            if "monolith" in self.policies:
                raise ValueError("policies: 'monolith' needs a monolith trained here; an imported DDM has none")
        for label in self.policies:
            try:
                parse_policy(label).check(k)
            except ValueError as exc:
                raise ValueError(f"policies: {exc}") from None
        if self.sample.probe_n > self.sample.n:
            raise ValueError(f"sample.probe_n={self.sample.probe_n} exceeds sample.n={self.sample.n}")
        if self.sample.routing_clock < self.sample.nfe_steps:
            raise ValueError(f"sample.routing_clock={self.sample.routing_clock} is coarser than the solver grid "
                             f"(sample.nfe_steps={self.sample.nfe_steps}): steps would share routing draws; "
                             f"use routing_clock >= {self.sample.nfe_steps}")
        if self.analysis.n > self.sample.n:
            raise ValueError(f"analysis.n={self.analysis.n} exceeds sample.n={self.sample.n}; trace at most the samples drawn")
        if self.evaluate.groups > min(self.sample.n, self.evaluate.n_real):
            raise ValueError(f"evaluate.groups={self.evaluate.groups} exceeds sample.n={self.sample.n} or "
                             f"evaluate.n_real={self.evaluate.n_real}; use at most the smaller of the two")
        if self.evaluate.kid_subset_size > self.sample.n:
            raise ValueError(f"evaluate.kid_subset_size={self.evaluate.kid_subset_size} exceeds sample.n={self.sample.n}; "
                             "use a subset size <= sample.n")
        eps = {f"amplification@{e:g}" for e in self.analysis.eps}
        for h in self.report.primary:
            if h.policy not in self.policies or h.policy == h.versus:
                raise ValueError(f"report.primary: policy '{h.policy}' must be one of policies other than "
                                 f"'{h.versus}': {', '.join(p for p in self.policies if p != h.versus)}")
            bad = [m for m in h.metrics if m not in CONTRAST_METRICS and m not in eps]
            if bad:
                raise ValueError(f"report.primary: unknown metric(s) {bad} for {h.policy}; choose from "
                                 f"{', '.join([*CONTRAST_METRICS, *sorted(eps)])}")
        return self

    @property
    def monolith_steps(self) -> int:
        """Monolith optimizer steps: explicit, or K x expert steps (the experts' total budget)."""
        return self.monolith.steps or self.cluster.k * self.expert.steps

    def policy(self, label: str) -> PolicySpec:
        spec = parse_policy(label)
        spec.check(self.cluster.k)
        return spec


def _format_error(err: ValidationError, source: str) -> str:
    e = err.errors()[0]
    loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
    if e["type"] == "extra_forbidden":
        allowed = _allowed_keys(e["loc"][:-1])
        return f"{source}: unknown key '{loc}'; allowed keys here: {', '.join(allowed)}"
    msg = e["msg"].removeprefix("Value error, ")
    given = e.get("input")
    shown = "" if isinstance(given, dict) or e["type"] == "missing" else f" (got {given!r})"
    return f"{source}: {loc}: {msg}{shown}"


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    model: type[BaseModel] = Config
    for part in loc:
        ann = model.model_fields[str(part)].annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
        else:
            break
    return list(model.model_fields)


def parse_config(raw: Any, source: str = "params.yaml") -> Config:
    """Validate a mapping into :class:`Config`; raise :class:`ConfigError` with one line on failure."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections at the top level, got {type(raw).__name__}")
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_error(exc, source)) from None


def load_config(path: Path) -> Config:
    """Read and validate a params file."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: params file not found; pass --params PATH or run from the repo root")
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not a UTF-8 text file"
        raise ConfigError(f"{path}: cannot read the params file ({reason}); pass a YAML file to --params") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}; fix the syntax") from None
    check_complete(raw, path)
    return parse_config(raw, str(path.name))


def check_complete(raw: Any, path: Path) -> None:
    """A params file must spell out every top-level key: an empty or truncated file would otherwise run on
    defaults (pydantic fills them, DVC does not). Sections may still omit keys inside them."""
    if raw is None:
        raise ConfigError(f"{path}: the params file is empty; restore it (e.g. `git checkout {path.name}` or "
                          "copy a profile from params/)")
    if not isinstance(raw, dict):
        return  # parse_config names the type
    missing = [key for key in Config.model_fields if key not in raw]
    if missing:
        raise ConfigError(f"{path}: missing top-level key(s) {', '.join(missing)} (a truncated file?); every "
                          f"params file spells out all {len(Config.model_fields)}: {', '.join(Config.model_fields)}")


def with_trainer(cfg: Config, **overrides: Any) -> Config:
    """``cfg`` with trainer keys overridden (CLI flags such as --devices), validated like params.yaml."""
    given = {key: value for key, value in overrides.items() if value is not None}
    if not given:
        return cfg
    raw = config_to_dict(cfg)
    raw["trainer"].update(given)
    flags = ", ".join(f"--{key.replace('_', '-')}" for key in given)
    return parse_config(raw, f"params.yaml with {flags}")


def config_to_dict(cfg: Config) -> dict[str, Any]:
    return cfg.model_dump(mode="json", by_alias=True)


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1, "c": [2, 3]}} -> {"a/b": 1, "a/c/0": 2, "a/c/1": 3} (lists of numbers or mappings)."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}/"))
        elif isinstance(value, list) and value and all(isinstance(v, (Mapping, int, float)) for v in value):
            out.update(flatten({str(i): v for i, v in enumerate(value)}, f"{name}/"))
        else:
            out[name] = value
    return out
