"""Run the deadline sidecar next to one worker: task events in, deadline metrics pushed out.

Events arrive on the HTTP endpoint (`POST /v1/tasks/start`, `POST /v1/tasks/end`), from an
event file (JSON lines) and through the Python API (extender.sidecar.api). The metrics are pushed
to the Pushgateway under job="extract-deadline", node=NODE, worker=WORKER and served on /metrics.
SIGTERM or SIGINT: a last push, then the group is deleted from the gateway.
"""

from __future__ import annotations

import argparse

DEFAULT_LISTEN = "127.0.0.1:9465"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The sidecar's flags."""
    parser.add_argument("--node", required=True,
                        help="the node's name (in a pod: --node=$(NODE_NAME) from spec.nodeName)")
    parser.add_argument("--worker", required=True, help="this worker's name (e.g. the pod name)")
    parser.add_argument("--pushgateway", required=True, metavar="URL",
                        help="Pushgateway URL, e.g. http://pushgateway.monitoring:9091")
    parser.add_argument("--listen", default=DEFAULT_LISTEN, metavar="HOST:PORT",
                        help=f"HTTP endpoint for events, /metrics and /healthz "
                             f"(default {DEFAULT_LISTEN}; port 0 picks a free one)")
    parser.add_argument("--profile", metavar="FILE",
                        help="expected seconds per task type, YAML mapping or CSV type,seconds")
    parser.add_argument("--config", metavar="FILE",
                        help="sidecar settings YAML (see config/sidecar.yaml; default: built-in)")
    parser.add_argument("--events-file", metavar="FILE", help="JSON-lines event file to tail")


def parse_listen(value: str) -> tuple[str, int]:
    """`HOST:PORT` -> (host, port); ConfigError on anything else."""
    from extender.errors import ConfigError

    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"--listen: expected HOST:PORT, e.g. {DEFAULT_LISTEN}, got {value!r}")
    return host.strip("[]"), int(port)


def check_gateway_url(url: str) -> None:
    """ConfigError unless `url` is http(s)://host[:port][/path] (checked before any thread
    starts, where a bad URL would only show up as a failed push)."""
    from urllib.parse import urlparse

    from extender.errors import ConfigError

    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ConfigError(f"--pushgateway: expected http(s)://HOST:PORT, e.g. "
                          f"http://pushgateway.monitoring:9091, got {url!r}")


def run(args: argparse.Namespace) -> int:
    """Run until SIGTERM/SIGINT; 0 on a clean stop, 1 if the group could not be deleted."""
    import logging
    import signal
    import threading

    from extender.errors import ConfigError
    from extender.sidecar.service import build_sidecar
    from extender.sidecar.settings import load_profile, load_sidecar_settings

    log = logging.getLogger("extender.sidecar")
    for flag in ("node", "worker"):
        if not getattr(args, flag).strip():
            raise ConfigError(f"--{flag}: must not be empty")
    check_gateway_url(args.pushgateway)
    settings = load_sidecar_settings(args.config)
    profile = load_profile(args.profile) if args.profile else {}
    sidecar = build_sidecar(settings, node=args.node, worker=args.worker,
                            pushgateway=args.pushgateway, listen=parse_listen(args.listen),
                            profile=profile, events_file=args.events_file)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    sidecar.start()
    assert sidecar.server is not None and sidecar.pusher is not None
    log.info("deadline sidecar for node=%s worker=%s on %s: pushing %s to %s every %gs "
             "(profile: %d types, events file: %s)", args.node, args.worker, sidecar.server.url,
             sidecar.pusher.group, args.pushgateway, settings.push.interval_s, len(profile),
             args.events_file or "none")
    stop.wait()
    log.info("stopping: last push, then deleting %s", sidecar.pusher.group)
    return 0 if sidecar.stop() else 1
