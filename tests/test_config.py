"""params.yaml validation: defaults load; every bad key or value is one ConfigError line naming the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import REPO_ROOT, TINY, Project, deep_merge
from pydantic import ValidationError

from ddmbench.config import Config, config_to_dict, load_config, parse_config
from ddmbench.errors import ConfigError


def _error(raw: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    message = str(info.value)
    assert "\n" not in message, f"ConfigError must be one line, got {message!r}"
    assert message.startswith("params.yaml: ")
    return message


def _tiny(**over: Any) -> dict[str, Any]:
    return deep_merge(TINY, over)


def test_defaults_load_and_are_consistent() -> None:
    for raw in (None, {}):
        cfg = parse_config(raw)
        assert isinstance(cfg, Config)
        assert cfg.experts == list(range(cfg.cluster.k))
        assert cfg.evaluate.kid_subset_size <= cfg.sample.n
        assert cfg.monolith_steps == cfg.cluster.k * cfg.expert.steps  # null = same total budget


def test_resolved_config_round_trips() -> None:
    cfg = parse_config(TINY)
    assert parse_config(config_to_dict(cfg)) == cfg


@pytest.mark.parametrize("profile", sorted([*REPO_ROOT.glob("params.yaml"), *REPO_ROOT.glob("params/*.yaml")]),
                         ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_shipped_profiles_validate(profile: Path) -> None:
    load_config(profile)


def _dvc_param_keys() -> set[str]:
    """Every dotted params key a stage of dvc.yaml declares (DVC reads them from the YAML file itself)."""
    stages = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]
    keys: set[str] = set()
    for stage in stages.values():
        keys.update(k for k in stage.get("do", stage).get("params", []) if isinstance(k, str))
    return keys


@pytest.mark.parametrize("profile", sorted([*REPO_ROOT.glob("params.yaml"), *REPO_ROOT.glob("params/*.yaml")]),
                         ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_shipped_profiles_spell_out_every_key_dvc_tracks(profile: Path) -> None:
    """Pydantic fills defaults, DVC does not: a key a stage tracks but the profile omits fails `dvc repro`."""
    raw = yaml.safe_load(profile.read_text())
    missing = []
    for key in sorted(_dvc_param_keys()):
        node: Any = raw
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                missing.append(key)
                break
            node = node[part]
    assert not missing, f"{profile.name} lacks {missing}"


def test_tiny_project_loads(project: Project) -> None:
    cfg = project.config()
    assert cfg.cluster.k == 2 and cfg.expert.net == "unet-xs" and cfg.data.sources == ["local"]


def test_config_is_frozen() -> None:
    cfg = parse_config(TINY)
    with pytest.raises(ValidationError):
        cfg.expert.steps = 5  # type: ignore[misc]


@pytest.mark.parametrize(("raw", "key", "allowed"), [
    ({"sedd": 1}, "sedd", ["seed", "data", "cluster", "experts", "tracking"]),
    ({"expert": {"stpes": 10}}, "expert.stpes", ["steps", "batch_size", "lr", "ema_decay", "net"]),
    ({"data": {"sources": ["local"], "chksums": "x"}}, "data.chksums", ["dataset", "root", "sources", "checksums"]),
    ({"trainer": {"gpus": 2}}, "trainer.gpus", ["accelerator", "devices", "num_nodes"]),
])
def test_unknown_key_names_key_and_lists_allowed(raw: dict[str, Any], key: str, allowed: list[str]) -> None:
    message = _error(raw)
    assert f"unknown key '{key}'" in message
    listed = message.split("allowed keys here:")[1]
    for name in allowed:
        assert name in listed
    assert key.rsplit(".", 1)[-1] not in listed.split(", ")


@pytest.mark.parametrize(("over", "key", "given"), [
    ({"expert": {"steps": "many"}}, "expert.steps", "'many'"),
    ({"seed": 1.5}, "seed", "1.5"),
    ({"cluster": {"k": [2]}}, "cluster.k", "[2]"),
    ({"trainer": {"precision": "fp8"}}, "trainer.precision", "'fp8'"),
    ({"sample": {"solver": "rk4"}}, "sample.solver", "'rk4'"),
    ({"expert": {"net": "unet-xxl"}}, "expert.net", "'unet-xxl'"),
    ({"data": {"sources": ["ftp"]}}, "data.sources.0", "'ftp'"),
    ({"tracking": {"enabled": "sometimes"}}, "tracking.enabled", "'sometimes'"),
])
def test_wrong_type_names_key_and_value(over: dict[str, Any], key: str, given: str) -> None:
    message = _error(_tiny(**over))
    assert f": {key}: " in message and f"(got {given})" in message


@pytest.mark.parametrize(("over", "key"), [
    ({"expert": {"steps": -5}}, "expert.steps"),
    ({"expert": {"steps": 0}}, "expert.steps"),
    ({"router": {"lr": 0}}, "router.lr"),
    ({"expert": {"lr": -1e-3}}, "expert.lr"),
    ({"expert": {"lr": float("nan")}}, "expert.lr"),
    ({"evaluator": {"lr": float("inf")}}, "evaluator.lr"),
    ({"expert": {"ema_decay": 1.0}}, "expert.ema_decay"),
    ({"sample": {"n": 1}}, "sample.n"),
    ({"cluster": {"k": 0}}, "cluster.k"),
    ({"trainer": {"devices": 0}}, "trainer.devices"),
    ({"seed": -1}, "seed"),
    ({"evaluate": {"groups": 1}}, "evaluate.groups"),
    ({"evaluate": {"pr_k": 0}}, "evaluate.pr_k"),
    ({"analysis": {"accuracy_n": 1}}, "analysis.accuracy_n"),
    ({"analysis": {"accuracy_t": [0.0]}}, "analysis.accuracy_t"),
])
def test_out_of_range_names_key(over: dict[str, Any], key: str) -> None:
    assert f": {key}: " in _error(_tiny(**over))


def test_nan_lr_from_yaml_is_rejected(tmp_path: Path) -> None:
    raw = _tiny()
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw).replace("lr: 0.003", "lr: .nan", 1))
    assert ".nan" in params.read_text()
    with pytest.raises(ConfigError, match=r"expert\.lr"):
        load_config(params)


@pytest.mark.parametrize("experts", [[0], [0, 1, 2], [1, 2], [0, 0]])
def test_experts_must_match_cluster_k(experts: list[int]) -> None:
    message = _error(_tiny(experts=experts))
    assert "experts" in message and "cluster.k=2" in message


def test_top_k_larger_than_k_is_rejected() -> None:
    message = _error(_tiny(policies=["full", "top-3"]))
    assert "top-3" in message and "k <= number of experts (2)" in message
    parse_config(_tiny(policies=["full", "top-2", "sample-2"]))  # k = K is fine


def test_unknown_policy_label_lists_valid_forms() -> None:
    message = _error(_tiny(policies=["full", "top2"]))
    assert "policies" in message and "unknown policy 'top2'" in message
    assert "top-<k>" in message and "nucleus-p<mass>-T<temperature>" in message


def test_policy_listed_twice_is_rejected() -> None:
    assert "twice" in _error(_tiny(policies=["top-1", "top-1"]))


@pytest.mark.parametrize("given, label", [("top-01", "top-1"), (" full", "full"),
                                          ("nucleus-p0.90-T0.50", "nucleus-p0.9-T0.5"), ("threshold-0.10", "threshold-0.1")])
def test_non_canonical_policy_spelling_is_rejected(given: str, label: str) -> None:
    # DVC's foreach names stages and output files after the spelling in params.yaml, the stage after the label:
    # two spellings of one policy would make `dvc repro` look for a file the stage never writes.
    message = _error(_tiny(policies=[given]))
    assert f"'{label}'" in message and "policies" in message


def test_kid_subset_larger_than_sample_n_is_rejected() -> None:
    message = _error(_tiny(sample={"n": 20}, evaluate={"kid_subset_size": 21}))
    assert "kid_subset_size=21" in message and "sample.n=20" in message
    parse_config(_tiny(sample={"n": 20}, evaluate={"kid_subset_size": 20}))


def test_non_mapping_top_level(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(params)


def test_invalid_yaml_names_line(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("seed: 0\ncluster:\n  k: [2\n")
    with pytest.raises(ConfigError, match=r"not valid YAML at line \d+"):
        load_config(params)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="params file not found"):
        load_config(tmp_path / "nope.yaml")


def test_policy_lookup_checks_k() -> None:
    cfg = parse_config(TINY)
    assert cfg.policy("top-2").label == "top-2"
    with pytest.raises(ValueError, match="k <= number of experts"):
        cfg.policy("top-3")


IMPORTED = {"ddm": {"train": [], "import": {"mixed": "ddms/mixed"}}, "experts": []}


@pytest.mark.parametrize("over, message", [
    ({"ddm": {"train": ["here"], "import": {"mixed": "ddms/mixed"}}}, "exactly one source"),
    ({"ddm": {"train": [], "import": {}}}, "exactly one source"),
    ({"ddm": {"train": [], "import": {"a b": "ddms/mixed"}}, "experts": []}, "names a DVC stage"),
    ({**IMPORTED, "experts": [0, 1]}, "experts must be []"),
    ({**IMPORTED, "policies": ["monolith", "full"]}, "'monolith' needs a monolith trained here"),
])
def test_the_ddm_source_is_one_of_two(over: dict[str, Any], message: str) -> None:
    assert message in _error(_tiny(**over))


def test_an_imported_ddm_profile_loads_and_keeps_the_import_key() -> None:
    cfg = parse_config(_tiny(**IMPORTED))
    assert cfg.ddm.folder == "ddms/mixed" and cfg.ddm.name == "mixed" and cfg.experts == []
    assert config_to_dict(cfg)["ddm"] == {"train": [], "import": {"mixed": "ddms/mixed"}}   # the key DVC reads
    assert parse_config(_tiny()).ddm.folder is None
