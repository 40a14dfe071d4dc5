"""Loading and validating the partition settings."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from extender.errors import ConfigError
from extender.partition.settings import load_partition_settings
from tests.partition.conftest import CONFIG


def write(tmp_path: Path, **changes: object) -> Path:
    data = yaml.safe_load(CONFIG.read_text())
    for dotted, value in changes.items():
        *parents, last = dotted.split("__")
        node = data
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    path = tmp_path / "partition.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_documented_default_config_loads() -> None:
    settings = load_partition_settings(CONFIG, environ={})
    assert settings.sizing.container == "worker"
    assert settings.source == str(CONFIG)


def test_environment_overrides_the_file() -> None:
    settings = load_partition_settings(CONFIG, environ={"PARTITION_NAMESPACE": "hpc",
                                                        "PARTITION_ROLLOUT__MAX_UNAVAILABLE": "3"})
    assert (settings.namespace, settings.rollout.max_unavailable) == ("hpc", 3)


@pytest.mark.parametrize(("changes", "message"), [
    ({"sizing__cpu_fraction": 1.5}, "sizing.cpu_fraction: expected a fraction in (0, 1]"),
    ({"sizing__container": "nope"}, "sizing.container: no container 'nope'"),
    ({"rollout__max_unavailable": 0}, "rollout.max_unavailable: expected a number > 0"),
    ({"leader__retry_period_s": 0}, "leader.retry_period_s: expected >= 1"),
    ({"leader__renew_deadline_s": 2}, "leader.renew_deadline_s: must exceed 1.2 x retry_period_s"),
    ({"leader__lease_duration_s": 10}, "leader.lease_duration_s: must exceed renew_deadline_s"),
    ({"pod_template__spec": None}, "pod_template.spec: required"),
    ({"pod_template__metadata__name": "x"}, "pod_template.metadata: name and namespace"),
    ({"name_prefix": "x" * 41}, "name_prefix: expected 1..40 characters"),
    ({"sizing__cpu_fractoin": 0.5}, "sizing: Object contains unknown field `cpu_fractoin`"),
    ({"metrics_port": "high"}, "metrics_port: Expected `int`"),
])
def test_bad_values_are_rejected_with_file_key_and_reason(
        tmp_path: Path, changes: dict[str, object], message: str) -> None:
    path = write(tmp_path, **changes)
    with pytest.raises(ConfigError) as excinfo:
        load_partition_settings(path, environ={})
    assert str(excinfo.value).startswith(f"{path}: ")
    assert message in str(excinfo.value)
