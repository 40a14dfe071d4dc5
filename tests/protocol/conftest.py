from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask

from tests.support import StaticSource, app_for, healthy, settings

NODES = [f"node-{i}" for i in range(512)]


@pytest.fixture
def make_app() -> Callable[..., Flask]:
    """An app over 512 healthy nodes (node-5 busy), with a warm cache and no refresher thread."""

    def make(prefix: str = "", binder: Any = None, **sections: Any) -> Flask:
        server = {"url_prefix": prefix, "bind_enabled": binder is not None}
        server.update(sections.pop("server", {}))
        s = settings(server=server, **sections)
        values = healthy(NODES, cpu_utilisation={"node-5": 0.97})
        app = app_for(s, StaticSource(s, values), binder=binder, start_refresher=False)
        app.extensions["extender"].cache.refresh()
        return app

    return make
