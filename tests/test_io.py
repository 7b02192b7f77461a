"""Atomic writes, safe (weights_only) loading, and checkpoint round trips."""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path

import pytest
import torch

from ddmbench.errors import ArtifactError
from ddmbench.io import atomic_path, load_tensors, read_json, save_tensors, write_json, write_text
from ddmbench.models import checkpoints, nets


class Boom(Exception):
    pass


class Payload:
    """An arbitrary object whose unpickling runs code (touches ``marker``): weights_only loading must refuse it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.marker,))


def _leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_atomic_write_keeps_old_file_when_body_raises(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    write_json(target, {"v": 1})
    before = target.read_bytes()
    with pytest.raises(Boom):
        with atomic_path(target) as tmp:
            tmp.write_text('{"v": 2, "half')
            raise Boom
    assert target.read_bytes() == before
    assert _leftovers(tmp_path) == []


def test_atomic_write_creates_nothing_when_body_raises(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "new.pt"
    with pytest.raises(Boom):
        with atomic_path(target) as tmp:
            torch.save({"a": torch.ones(2)}, tmp)
            raise Boom
    assert not target.exists() and _leftovers(target.parent) == []


def test_failed_serialisation_keeps_old_file(tmp_path: Path) -> None:
    target = tmp_path / "m.json"
    write_json(target, {"ok": True})
    with pytest.raises(TypeError):
        write_json(target, {"bad": object()})
    assert json.loads(target.read_text()) == {"ok": True}
    assert _leftovers(tmp_path) == []


def test_atomic_write_replaces_on_success(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "er" / "r.md"
    write_text(target, "one")
    write_text(target, "two")
    assert target.read_text() == "two" and _leftovers(target.parent) == []


def test_write_json_handles_tensors_and_paths(tmp_path: Path) -> None:
    target = tmp_path / "m.json"
    write_json(target, {"t": torch.tensor([1.5, 2.0]), "s": torch.tensor(3), "p": Path("a/b"), "f": 0.25})
    assert json.loads(target.read_text()) == {"t": [1.5, 2.0], "s": 3, "p": "a/b", "f": 0.25}


def test_save_load_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "t.pt"
    obj = {"images": torch.randint(0, 255, (4, 28, 28), dtype=torch.uint8), "n": 4, "name": "full",
           "nested": {"w": torch.randn(3)}}
    save_tensors(path, obj)
    back = load_tensors(path, "ddmbench sample")
    assert torch.equal(back["images"], obj["images"]) and back["n"] == 4 and back["name"] == "full"
    assert torch.equal(back["nested"]["w"], obj["nested"]["w"])


@pytest.mark.parametrize("corrupt", ["truncate", "garbage", "empty"])
def test_corrupt_file_is_one_line_artifact_error(tmp_path: Path, corrupt: str) -> None:
    path = tmp_path / "samples.pt"
    save_tensors(path, {"images": torch.zeros(64, 28, 28, dtype=torch.uint8)})
    blob = path.read_bytes()
    path.write_bytes({"truncate": blob[: len(blob) // 2], "garbage": b"\x00not a zip" * 50, "empty": b""}[corrupt])
    with pytest.raises(ArtifactError) as info:
        load_tensors(path, "ddmbench sample --policy full")
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message and "ddmbench sample --policy full" in message


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pickled_object_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pt"
    torch.save({"images": torch.zeros(2), "payload": Payload(marker)}, path)
    with pytest.raises(ArtifactError, match="cannot be loaded safely") as info:
        load_tensors(path, "ddmbench train-router")
    assert "\n" not in str(info.value)
    assert not marker.exists()
    plain = tmp_path / "evil.pkl"
    plain.write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(ArtifactError):
        load_tensors(plain, "x")
    assert not marker.exists()
    # control: the payload is live, an unrestricted load does run it
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_missing_file_names_the_producing_stage(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match=r"missing; run `ddmbench cluster` first"):
        load_tensors(tmp_path / "clusters.pt", "ddmbench cluster")
    with pytest.raises(ArtifactError, match=r"missing; run `ddmbench evaluate` first"):
        read_json(tmp_path / "m.json", "ddmbench evaluate")


def test_read_json_rejects_invalid(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    path.write_text("{not json")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        read_json(path, "ddmbench cluster")


def test_velocity_checkpoint_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = nets.build_velocity_net("unet-xs")
    path = tmp_path / "expert-0.pt"
    checkpoints.save_weights(path, net, {"kind": "expert", "net": "unet-xs", "k": 0})
    loaded = checkpoints.load_velocity_net(path, "expert", "ddmbench train-expert --expert 0")
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([0.2, 0.9])
    with torch.no_grad():
        assert torch.equal(loaded(x, t), net.eval()(x, t))


def test_checkpoint_kind_is_checked(tmp_path: Path) -> None:
    path = tmp_path / "router.pt"
    checkpoints.save_weights(path, nets.build_router("router-s", 2), {"kind": "router", "net": "router-s",
                                                                       "num_experts": 2})
    assert checkpoints.load_router(path).head[-1].out_features == 2
    with pytest.raises(ArtifactError, match="is not a expert checkpoint"):
        checkpoints.load_velocity_net(path, "expert", "ddmbench train-expert")


def test_checkpoint_network_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "expert-0.pt"
    checkpoints.save_weights(path, nets.build_velocity_net("unet-xs"), {"kind": "expert", "net": "unet-s"})
    with pytest.raises(ArtifactError, match="does not match its network") as info:
        checkpoints.load_velocity_net(path, "expert", "ddmbench train-expert")
    assert "\n" not in str(info.value)


def test_plain_tensor_file_is_not_a_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "evaluator.pt"
    save_tensors(path, {"weights": torch.zeros(2)})
    with pytest.raises(ArtifactError, match="not a evaluator checkpoint"):
        checkpoints.load_classifier(path)


def test_nets_shapes() -> None:
    x, t = torch.randn(3, 1, 28, 28), torch.rand(3)
    for preset in nets.UNET_PRESETS:
        assert nets.build_velocity_net(preset)(x, t).shape == (3, 1, 28, 28)
    assert nets.build_router("router-s", 5)(x, t).shape == (3, 5)
    clf = nets.build_classifier("classifier-s")
    assert clf(x).shape == (3, 10) and clf.features(x).shape == (3, clf.num_features)
    emb = nets.timestep_embedding(torch.tensor([0.0, 1.0]), 8)
    assert emb.shape == (2, 8) and math.isclose(float(emb[0, :4].sum()), 4.0)
