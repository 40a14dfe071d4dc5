"""Start real Prometheus and Pushgateway servers on free loopback ports (demo, tests, benchmarks).

Debian's `prometheus` and `prometheus-pushgateway` packages provide the binaries; `make` installs
them when missing. Each server gets its own temporary directory and is stopped (SIGTERM, then
SIGKILL) by `stop()` or on context exit. Nothing here talks to anything but 127.0.0.1.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from extender.localserver import LocalServer, ServerError, free_port

PROMETHEUS_BIN = "prometheus"
PUSHGATEWAY_BIN = "prometheus-pushgateway"


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise ServerError(
            f"{name} is not installed: run `make deps` (installs Debian's prometheus and "
            f"prometheus-pushgateway packages)"
        )
    return path


@dataclass(frozen=True)
class ScrapeTarget:
    """One scrape job for the local Prometheus."""

    job: str
    targets: tuple[str, ...]
    labels: dict[str, str] = field(default_factory=dict)
    honor_labels: bool = False
    metrics_path: str = "/metrics"
    extra: dict[str, Any] = field(default_factory=dict)
    """Additional scrape_config keys, e.g. `http_sd_configs` (then `targets` may be empty)."""


def prometheus_config(targets: Iterable[ScrapeTarget], scrape_interval_s: float = 1.0,
                      rule_files: Iterable[Path] = ()) -> dict[str, Any]:
    """A prometheus.yml scraping `targets` every `scrape_interval_s` and loading `rule_files`
    (evaluated every `scrape_interval_s` unless a group sets its own `interval`)."""
    jobs = []
    for target in targets:
        job: dict[str, Any] = {
            "job_name": target.job,
            "honor_labels": target.honor_labels,
            "metrics_path": target.metrics_path,
        }
        if target.targets:
            job["static_configs"] = [{"targets": list(target.targets), "labels": target.labels}]
        job.update(target.extra)
        jobs.append(job)
    # Prometheus durations take integers only: 0.5 s must be written 500ms.
    interval = f"{max(round(scrape_interval_s * 1000), 100)}ms"
    config: dict[str, Any] = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "scrape_configs": jobs}
    files = [str(path) for path in rule_files]
    if files:
        config["rule_files"] = files
    return config


def prometheus(targets: Iterable[ScrapeTarget], *, scrape_interval_s: float = 1.0,
               port: int | None = None, workdir: Path | None = None,
               web_config: Mapping[str, Any] | None = None,
               ready_options: Mapping[str, Any] | None = None,
               rule_files: Iterable[Path] = ()) -> LocalServer:
    """A (not yet started) Prometheus scraping `targets`; call `.start()`.

    `rule_files` are loaded as prometheus.yml's `rule_files:` (a malformed file keeps the server
    from starting). The config is `<workdir>/prometheus.yml`; rewrite it and POST `/-/reload`
    to change targets or rules of a running server.

    `web_config` is Prometheus' `--web.config.file` content (`tls_server_config`,
    `basic_auth_users`, ...): with `tls_server_config` it serves https. `ready_options` are the
    readiness probe's `requests.get` arguments that such a server needs (verify, cert, auth)."""
    workdir = workdir or Path(tempfile.mkdtemp(prefix="prometheus-"))
    config = workdir / "prometheus.yml"
    config.write_text(yaml.safe_dump(prometheus_config(targets, scrape_interval_s, rule_files)))
    port = port or free_port()
    argv = [
        _binary(PROMETHEUS_BIN),
        f"--config.file={config}",
        f"--storage.tsdb.path={workdir / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--web.enable-lifecycle",
        "--storage.tsdb.retention.time=1h",
    ]
    scheme = "http"
    if web_config is not None:
        path = workdir / "web.yml"
        path.write_text(yaml.safe_dump(dict(web_config)))
        argv.append(f"--web.config.file={path}")
        scheme = "https" if "tls_server_config" in web_config else "http"
    return LocalServer("prometheus", port, argv, workdir, "/-/ready", scheme=scheme,
                       ready_options=dict(ready_options or {}))


def pushgateway(*, port: int | None = None, workdir: Path | None = None) -> LocalServer:
    """A (not yet started) Pushgateway on loopback; call `.start()`."""
    workdir = workdir or Path(tempfile.mkdtemp(prefix="pushgateway-"))
    port = port or free_port()
    argv = [_binary(PUSHGATEWAY_BIN), f"--web.listen-address=127.0.0.1:{port}"]
    return LocalServer("pushgateway", port, argv, workdir, "/-/ready")
