"""Configuration: one validated object; errors name file, key and reason."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from extender.errors import ConfigError
from extender.settings import load_settings, redacted
from tests.support import CONFIG, REPO


def write(tmp_path: Path, data: dict, catalog: str | None = None) -> Path:
    path = tmp_path / "extender.yaml"
    base = yaml.safe_load(CONFIG.read_text())
    base["catalog_file"] = str(REPO / "config" / "catalog.yaml")
    if catalog is not None:
        (tmp_path / "catalog.yaml").write_text(catalog)
        base["catalog_file"] = "catalog.yaml"
    for key, value in data.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    path.write_text(yaml.safe_dump(base))
    return path


def test_shipped_config_loads_with_every_profile() -> None:
    s = load_settings(CONFIG, environ={})
    assert set(s.policy.profiles) >= {"metrics-aware", "gpu", "power"}
    assert s.metric("host_power_watts").scale == pytest.approx(1e-6)
    assert s.metric("gpu_utilisation").node_labels == ("hostname", "Hostname")


def test_wrong_type_names_file_key_and_reason(tmp_path: Path) -> None:
    path = write(tmp_path, {"cache": {"max_staleness_s": "old"}})
    with pytest.raises(ConfigError) as err:
        load_settings(path, environ={})
    assert str(err.value) == f"{path}: cache.max_staleness_s: Expected `float`, got `str`"


def test_unknown_key_is_an_error_not_a_silent_default(tmp_path: Path) -> None:
    path = write(tmp_path, {"cache": {"max_stalenes_s": 10}})
    with pytest.raises(ConfigError, match="unknown field `max_stalenes_s`"):
        load_settings(path, environ={})


def test_weight_must_be_a_known_metric_and_non_negative(tmp_path: Path) -> None:
    data = yaml.safe_load(CONFIG.read_text())["policy"]
    data["profiles"]["metrics-aware"]["weights"]["cpu_util"] = 1
    with pytest.raises(ConfigError,
                       match=r"policy.profiles.metrics-aware.weights.cpu_util: not in the catalog"):
        load_settings(write(tmp_path, {"policy": data}), environ={})
    data = yaml.safe_load(CONFIG.read_text())["policy"]
    data["profiles"]["metrics-aware"]["weights"]["cpu_utilisation"] = -1
    with pytest.raises(ConfigError, match="expected a number >= 0, got -1"):
        load_settings(write(tmp_path, {"policy": data}), environ={})


def test_default_profile_must_exist(tmp_path: Path) -> None:
    path = write(tmp_path, {"policy": {"default": "fastest"}})
    with pytest.raises(ConfigError, match="policy.default: no profile named 'fastest'"):
        load_settings(path, environ={})


def test_invalid_yaml_and_missing_file_are_clear(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("server: [unclosed")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_settings(bad, environ={})
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "nope.yaml", environ={})


def test_catalog_errors_name_the_catalog_file(tmp_path: Path) -> None:
    path = write(tmp_path, {}, catalog="metrics:\n  - name: x\n    query: up\n    range: [1, 0]\n")
    with pytest.raises(ConfigError, match=r"catalog.yaml: metrics.0.range: expected min < max"):
        load_settings(path, environ={})
    path = write(tmp_path, {}, catalog="metrics:\n  - name: x\n")
    with pytest.raises(ConfigError, match=r"catalog.yaml: metrics.0.query: required \(or set risk.of\)"):
        load_settings(path, environ={})


def test_environment_overrides_the_file_and_flags_override_both() -> None:
    env = {"EXTENDER_PROMETHEUS__URL": "http://prom:9090", "EXTENDER_CACHE__MAX_STALENESS_S": "30"}
    s = load_settings(CONFIG, environ=env)
    assert s.prometheus.url == "http://prom:9090"
    assert s.cache.max_staleness_s == 30
    s = load_settings(CONFIG, environ=env, overrides={"prometheus": {"url": "http://flag:9090"}})
    assert s.prometheus.url == "http://flag:9090"


def test_bad_environment_value_is_reported_with_the_key() -> None:
    with pytest.raises(ConfigError, match="cache.refresh_interval_s: Expected `float`"):
        load_settings(CONFIG, environ={"EXTENDER_CACHE__REFRESH_INTERVAL_S": "soon"})


def test_redacted_config_hides_secrets() -> None:
    s = load_settings(CONFIG, environ={
        "EXTENDER_PROMETHEUS__URL": "https://user:hunter2@prom:9090",
        "EXTENDER_PROMETHEUS__HEADERS": "{X-Scope-OrgID: tenant-secret}"})
    text = str(redacted(s))
    assert "hunter2" not in text and "tenant-secret" not in text
    assert "https://<redacted>@prom:9090" in text


def test_check_config_command_reports_ok_and_errors(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from argparse import Namespace

    from extender.commands import check_config

    assert check_config.run(Namespace(file=CONFIG)) == 0
    out = capsys.readouterr().out
    assert "ok (25 catalog metrics, 36 monitoring metrics" in out
    with pytest.raises(ConfigError):
        check_config.run(Namespace(file=write(tmp_path, {"cache": {"missing_data": "maybe"}})))


def test_kubernetes_service_link_variables_are_not_settings() -> None:
    # A Service called `extender` injects these into every pod of its namespace.
    env = {"EXTENDER_SERVICE_HOST": "10.96.0.7", "EXTENDER_SERVICE_PORT": "8888",
           "EXTENDER_PORT": "tcp://10.96.0.7:8888", "EXTENDER_PORT_8888_TCP_PROTO": "tcp",
           "EXTENDER_SERVICE__PORT_HTTP": "8888", "EXTENDER_CACHE__MAX_STALENESS_S": "45"}
    s = load_settings(CONFIG, environ=env)
    assert s.cache.max_staleness_s == 45


def test_with_pod_only_on_the_hot_spot_metrics(tmp_path: Path) -> None:
    data = yaml.safe_load(CONFIG.read_text())["policy"]
    data["profiles"]["metrics-aware"]["filters"].append(
        {"metric": "network_receive_bytes", "above": 1e9, "with_pod": True})
    with pytest.raises(ConfigError, match=r"metrics-aware.filters.5.with_pod: only for the "
                                          r"hot-spot CPU and memory metrics"):
        load_settings(write(tmp_path, {"policy": data}), environ={})
