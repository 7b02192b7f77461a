"""A network folder as diffusers writes one: ``config.json`` (``_class_name`` names the class) and safetensors
weights. The class is one of diffusers' models (``UNet2DModel``, ``DiTTransformer2DModel``,
``Transformer2DModel``, or any other model class diffusers exports), one of ddmbench's own nets
(``_class_name: ddmbench``, with ``net``, ``role`` and ``image_shape``), or a class of the user's own
(``_class_name: "package.module:factory"``, called with the config and returning an ``nn.Module``).

Weights load only from safetensors; every tensor must match the network built from the config, and the first
that does not is named in a one-line error. Each file's path is returned for the import's record.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ddmbench.ddm.expert import Call, call_plain
from ddmbench.errors import ArtifactError, ConfigError, first_line

WEIGHTS = ("diffusion_pytorch_model.safetensors", "model.safetensors")
DIFFUSERS_ADAPTED = ("UNet2DModel", "DiTTransformer2DModel", "Transformer2DModel")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def call_diffusers(model: Any, x: torch.Tensor, timestep: torch.Tensor, cond: Any) -> torch.Tensor:
    """A diffusers model's prediction tensor: ``model(x, timestep, class_labels=cond).sample``."""
    return model(x, timestep, class_labels=cond, return_dict=False)[0]


def weights_file(folder: Path) -> Path:
    for name in WEIGHTS:
        if (folder / name).is_file():
            return folder / name
    found = sorted(p.name for p in folder.glob("*.safetensors"))
    if len(found) == 1:
        return folder / found[0]
    raise ArtifactError(f"{folder} holds {'no' if not found else 'several'} safetensors weights "
                        f"({', '.join(found) or 'expected ' + WEIGHTS[0]}); pickled weights are not loaded")


def build(config: dict[str, Any], folder: Path) -> tuple[nn.Module, Call]:
    """The untrained network ``config`` names, and how to call it."""
    name = config.get("_class_name")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{folder / 'config.json'}: no _class_name; name the network's class")
    if name == "ddmbench":
        from ddmbench.models import nets

        shape = tuple(config.get("image_shape", ()))
        if config.get("role") == "router":
            return nets.build_router(config["net"], int(config["num_experts"]), shape), call_plain
        return nets.build_velocity_net(config["net"], shape), call_plain
    if ":" in name:
        module, _, factory = name.partition(":")
        try:
            return getattr(importlib.import_module(module), factory)(config), call_plain
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"{folder / 'config.json'}: _class_name {name!r} cannot be imported "
                              f"({first_line(exc)}); install the package that defines it") from None
    import diffusers

    cls = getattr(diffusers, name, None)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ConfigError(f"{folder / 'config.json'}: _class_name {name!r} is neither a diffusers model class, "
                          "'ddmbench' nor 'module:factory'")
    return cls.from_config(config), call_diffusers


def _build_empty(config: dict[str, Any], folder: Path) -> tuple[nn.Module, Call]:
    """The network built on the meta device (shapes, no storage), so that loading its weights holds them once;
    built for real when a class cannot be built there."""
    try:
        with torch.device("meta"):
            return build(config, folder)
    except (ConfigError, ArtifactError):
        raise
    except Exception:     # noqa: BLE001  (a user's factory that computes with data at construction)
        return build(config, folder)


def load_network(folder: Path) -> tuple[nn.Module, Call, dict[str, Path]]:
    """(network in eval mode with its trained weights, its call, {file name: path}) of a network folder."""
    folder = Path(folder)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ArtifactError(f"{config_path} is missing: a network folder holds config.json and safetensors weights")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{config_path} is not valid JSON ({exc.msg})") from None
    net, call = _build_empty(config, folder)
    path = weights_file(folder)
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(path)
    except (SafetensorError, OSError) as exc:
        raise ArtifactError(f"{path} is not a safetensors file ({first_line(exc)})") from None
    expected = net.state_dict()
    for key, tensor in state.items():
        if key not in expected:
            raise ArtifactError(f"{path}: tensor {key} is not a parameter of the {config['_class_name']} its "
                                "config.json builds")
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise ArtifactError(f"{path}: tensor {key} has shape {tuple(tensor.shape)} but its config.json builds "
                                f"{tuple(expected[key].shape)}")
    missing = sorted(set(expected) - set(state))
    if missing:
        raise ArtifactError(f"{path} lacks tensor {missing[0]} ({len(missing)} missing) of the network its "
                            "config.json builds")
    state = {k: v if v.dtype == expected[k].dtype else v.to(expected[k].dtype) for k, v in state.items()}
    net.load_state_dict(state, assign=True)       # the file's tensors become the weights: held once, not copied
    if any(t.is_meta for t in [*net.parameters(), *net.buffers()]):    # a buffer no file holds: build it for real
        net, call = build(config, folder)
        net.load_state_dict(state)
    if config["_class_name"] == "ddmbench" and float(config.get("temperature", 1.0)) != 1.0:
        from ddmbench.models.checkpoints import TemperatureScaled

        net = TemperatureScaled(net, float(config["temperature"]))      # a calibrated router's fitted T
    return net.eval().requires_grad_(False), call, {config_path.name: config_path, path.name: path}


def save_network(folder: Path, net: nn.Module, config: dict[str, Any]) -> None:
    """``config.json`` and ``diffusion_pytorch_model.safetensors`` of ``net``, each written atomically."""
    from safetensors.torch import save_file

    from ddmbench.io import atomic_path, write_text

    folder.mkdir(parents=True, exist_ok=True)
    write_text(folder / "config.json", json.dumps(config, indent=1) + "\n")
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    with atomic_path(folder / WEIGHTS[0]) as tmp:
        save_file(state, str(tmp))
