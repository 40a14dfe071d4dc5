"""Fixtures of the sidecar tests: clock, settings, tracker, real Pushgateways."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlparse

import pytest

from extender import localserver
from extender.demo import launcher
from extender.demo.launcher import ScrapeTarget
from extender.sidecar.settings import SidecarSettings
from extender.sidecar.tracker import Tracker
from tests.sidecar.support import ManualClock, make_settings, start


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def settings() -> SidecarSettings:
    return make_settings()


@pytest.fixture
def tracker(settings: SidecarSettings, clock: ManualClock) -> Tracker:
    return Tracker(settings, profile={"profiled": 10.0}, clock=clock)


@pytest.fixture(scope="session")
def shared_gateway() -> Iterator[localserver.LocalServer]:
    """One real Pushgateway for the tests that do not stop it (each uses its own group)."""
    with start(launcher.pushgateway()) as gateway:
        yield gateway


@pytest.fixture
def own_gateway() -> Iterator[localserver.LocalServer]:
    """A real Pushgateway this test may stop and restart (with `start()`)."""
    with start(launcher.pushgateway()) as gateway:
        yield gateway


@pytest.fixture(scope="session")
def gateway_prometheus(shared_gateway: localserver.LocalServer) -> Iterator[localserver.LocalServer]:
    """A real Prometheus scraping the shared Pushgateway every second, with honor_labels."""
    target = ScrapeTarget("pushgateway", (urlparse(shared_gateway.url).netloc,),
                          honor_labels=True)
    with start(launcher.prometheus([target], scrape_interval_s=1)) as server:
        yield server
