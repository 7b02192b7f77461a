"""``ddm.yaml``: what a DDM folder's own layout does not say, in the form a user writes.

A DDM folder in Paris's layout holds one sub-folder per expert and one for the router, each a ``config.json``
(``_class_name`` names the network) and safetensors weights; optionally ``vae/`` and ``text_encoder/``. The
manifest adds what the harness needs to call them:

    format: 1
    image_shape: [4, 32, 32]            # (C, H, W) of the experts' input: latents for a latent DDM
    experts:                            # in routing order: the router's logit k scores experts[k]
      - path: expert_0
        prediction: epsilon             # velocity | epsilon | sample | v_prediction
        convention: {kind: variance-preserving, beta_schedule: linear, beta_start: 0.0001, beta_end: 0.02,
                     num_train_timesteps: 1000}
        out_channels: 4                 # keep the first C output channels (a DiT's learned variance: 2C out)
      - path: expert_1
        prediction: velocity
        convention: {kind: flow, noise_at: 1, timestep_scale: 1000, velocity_sign: 1}
    router:
      path: router
      convention: {kind: flow, noise_at: 1, timestep_scale: 1}   # the router's time input, as for an expert
    clusters: clusters.json             # optional: each expert's training indices into the dataset below
    dataset: mnist                      # optional: the data the experts were trained on (p*, oracle, reference)

A convention is ``flow`` (``noise_at``: the end of its time where the noise is, ``timestep_scale``,
``velocity_sign``) or ``variance-preserving`` (a diffusers beta schedule, or ``alphas_cumprod``: a path to a
safetensors file holding that tensor).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ddmbench.ddm.conventions import Flow, VariancePreserving
from ddmbench.ddm.expert import ExpertSpec
from ddmbench.errors import ConfigError

MANIFEST = "ddm.yaml"
FORMAT = 1


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FlowConvention(_Strict):
    kind: Literal["flow"]
    noise_at: Literal[0, 1] = 1
    timestep_scale: float = Field(1.0, gt=0)
    velocity_sign: Literal[1, -1] = 1

    def build(self, folder: Path) -> Flow:
        return Flow(self.noise_at, self.timestep_scale, self.velocity_sign)


class VPConvention(_Strict):
    kind: Literal["variance-preserving"]
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = "linear"
    beta_start: float = Field(1e-4, gt=0, lt=1)
    beta_end: float = Field(0.02, gt=0, lt=1)
    num_train_timesteps: int = Field(1000, ge=2)
    alphas_cumprod: str | None = None          # a safetensors file in the folder holding ``alphas_cumprod``

    def build(self, folder: Path) -> VariancePreserving:
        if self.alphas_cumprod is None:
            return VariancePreserving.from_betas(self.beta_start, self.beta_end, self.beta_schedule,
                                                 self.num_train_timesteps)
        from safetensors.torch import load_file

        path = folder / self.alphas_cumprod
        tensors = load_file(path) if path.is_file() else {}
        if "alphas_cumprod" not in tensors:
            raise ConfigError(f"{path}: no tensor 'alphas_cumprod'; write the schedule's ᾱ_n there or name a "
                              "beta_schedule instead")
        return VariancePreserving(tensors["alphas_cumprod"].double())


ConventionSpec = Annotated[FlowConvention | VPConvention, Field(discriminator="kind")]


class ExpertEntry(_Strict):
    path: str
    prediction: Literal["velocity", "epsilon", "sample", "v_prediction"] = "velocity"
    convention: ConventionSpec = FlowConvention(kind="flow")
    out_channels: int | None = Field(None, ge=1)

    def spec(self, folder: Path) -> ExpertSpec:
        return ExpertSpec(self.prediction, self.convention.build(folder), self.out_channels)


class RouterEntry(_Strict):
    path: str
    convention: ConventionSpec = FlowConvention(kind="flow")


class Manifest(_Strict):
    format: Literal[1] = FORMAT
    image_shape: tuple[int, int, int]
    experts: list[ExpertEntry] = Field(min_length=1)
    router: RouterEntry | None = None
    clusters: str | None = None
    dataset: str | None = None

    @field_validator("image_shape")
    @classmethod
    def _positive(cls, shape: tuple[int, int, int]) -> tuple[int, int, int]:
        if min(shape) < 1:
            raise ValueError("every dimension must be at least 1")
        return shape


def read_manifest(folder: Path) -> Manifest:
    """The folder's ``ddm.yaml``, validated; a one-line ConfigError naming the key otherwise."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise ConfigError(f"{path} is missing: a DDM folder needs a {MANIFEST} saying what each expert predicts "
                          "and under which noise convention (format: docs, 'External DDMs')")
    try:
        raw = yaml.safe_load(path.read_text())
        return Manifest.model_validate(raw)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML ({str(exc).splitlines()[0]})") from None
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise ConfigError(f"{path}: {where}: {err['msg']}") from None


def write_manifest(folder: Path, manifest: Manifest) -> None:
    from ddmbench.io import write_text

    write_text(Path(folder) / MANIFEST, yaml.safe_dump(manifest.model_dump(mode="json", exclude_none=True),
                                                       sort_keys=False))
