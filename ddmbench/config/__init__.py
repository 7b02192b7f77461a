"""Typed, validated configuration mirroring ``params.yaml``: ``sections`` holds one model per section,
``loading`` the root ``Config`` and how a params file becomes one. Any unknown key, wrong type or
out-of-range value stops with one line naming the key, the value and what is allowed."""

from ddmbench.config.loading import Config, config_to_dict, flatten, load_config, parse_config, with_trainer
from ddmbench.config.sections import CONTRAST_METRICS, NET_PRESETS, AnalysisConfig, FlowTrainConfig, ReportConfig, SampleConfig

__all__ = ["Config", "config_to_dict", "flatten", "load_config", "parse_config", "with_trainer", "CONTRAST_METRICS",
           "NET_PRESETS", "AnalysisConfig", "FlowTrainConfig", "ReportConfig", "SampleConfig"]
