"""The floor: the cheapest correct extender on the same stack, to measure ours against.

Flask, served by the same gunicorn options, reading the body the same way and decoding it with
the same msgspec decoder (`extender.protocol`). Then it decides nothing: filter passes every
node (echoing full Node objects back in `nodes` mode), prioritize gives every node score 0.
Whatever the extender costs beyond this is the price of its policy, cache and bookkeeping.
"""

from __future__ import annotations

from flask import Flask, Response, request

from extender import protocol as wire
from extender.errors import ProtocolError
from extender.settings import Settings

JSON = "application/json"


def create_floor_app(settings: Settings) -> Flask:
    """A parse-only extender answering under `settings.server.url_prefix`."""
    app = Flask("floor")
    max_body = settings.server.max_body_bytes

    def args() -> wire.ExtenderArgs:
        return wire.decode(request.stream.read(max_body + 1), wire.ExtenderArgs, max_bytes=max_body)

    def answer(payload: object) -> Response:
        return Response(wire.encode(payload), mimetype=JSON)

    prefix = settings.server.url_prefix

    @app.post(f"{prefix}/filter")
    def filter_() -> Response:
        a = args()
        if a.NodeNames is None and a.Nodes is not None:
            return answer(wire.ExtenderFilterResult(Nodes=a.Nodes))
        return answer(wire.ExtenderFilterResult(NodeNames=a.NodeNames or []))

    @app.post(f"{prefix}/prioritize")
    def prioritize() -> Response:
        return answer([wire.HostPriority(Host=name, Score=0) for name in wire.node_names(args())])

    @app.get("/healthz")
    def healthz() -> Response:
        return answer({"status": "ok"})

    @app.errorhandler(ProtocolError)
    def bad_request(exc: ProtocolError) -> Response:
        return Response(wire.encode({"Error": str(exc)}), status=400, mimetype=JSON)

    return app
