"""The sidecar's settings section and profile file: defaults, overrides, clear errors."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from extender.errors import ConfigError
from extender.sidecar.settings import SidecarSettings, load_profile, load_sidecar_settings

CONFIG = Path(__file__).resolve().parents[2] / "config"


def test_documented_config_file_holds_exactly_the_built_in_defaults() -> None:
    loaded = load_sidecar_settings(CONFIG / "sidecar.yaml", environ={})
    assert msgspec.structs.replace(loaded, source="<defaults>") == SidecarSettings()


def test_environment_overrides_the_file_and_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "sidecar.yaml"
    path.write_text("push:\n  interval_s: 30\n")
    env = {"EXTENDER_SIDECAR_PUSH__TIMEOUT_S": "0.5", "EXTENDER_SIDECAR_JITTER__RELATIVE": "1"}
    settings = load_sidecar_settings(path, environ=env)
    assert (settings.push.interval_s, settings.push.timeout_s) == (30.0, 0.5)
    assert settings.jitter.relative == 1.0
    assert load_sidecar_settings(None, environ=env).push.timeout_s == 0.5


@pytest.mark.parametrize(("text", "message"), [
    ("window:\n  seconds: 0\n", "window.seconds: expected a number > 0, got 0"),
    ("jitter:\n  absolute_s: -1\n", "jitter.absolute_s: expected a number >= 0, got -1"),
    ("estimator:\n  alpha: 2\n", "estimator.alpha: expected 0 < alpha <= 1"),
    ("lateness_buckets: [1, 0.5]\n", "lateness_buckets: expected increasing numbers >= 0"),
    ("push:\n  interval: 5\n", "push: Object contains unknown field `interval`"),
    ("max_running: many\n", "max_running: Expected `int`, got `str`"),
])
def test_bad_values_name_the_file_and_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "sidecar.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_sidecar_settings(path, environ={})
    assert str(caught.value).startswith(f"{path}: {message}")


def test_profile_example_loads_as_type_to_seconds() -> None:
    profile = load_profile(CONFIG / "sidecar-profile.example.yaml")
    assert profile["fit"] == 3.0 and all(seconds > 0 for seconds in profile.values())


def test_csv_profile_with_or_without_header(tmp_path: Path) -> None:
    with_header = tmp_path / "a.csv"
    with_header.write_text("type,seconds\nfit,3\npreprocess, 0.5\n\n")
    without = tmp_path / "b.csv"
    without.write_text("fit,3\n")
    assert load_profile(with_header) == {"fit": 3.0, "preprocess": 0.5}
    assert load_profile(without) == {"fit": 3.0}


@pytest.mark.parametrize(("name", "text", "message"), [
    ("p.yaml", "fit: fast\n", "fit: expected seconds > 0, got 'fast'"),
    ("p.yaml", "fit: 0\n", "fit: expected seconds > 0, got 0"),
    ("p.yaml", "- fit\n", "expected a mapping of task type -> seconds, got list"),
    ("p.yaml", "fit: [1\n", "invalid YAML"),
    ("p.csv", "fit,3,extra\n", "row 1: expected `type,seconds`"),
    ("p.csv", "fit,-2\n", "fit: expected seconds > 0, got '-2'"),
])
def test_bad_profiles_name_the_file_and_the_entry(tmp_path: Path, name: str, text: str,
                                                  message: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_profile(path)
    assert str(caught.value).startswith(f"{path}: ")
    assert message in str(caught.value)
