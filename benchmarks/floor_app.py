"""The floors: the cheapest correct extender on the same stack, to measure ours against.

`floor`: a parse-only Flask extender (the reference the issue names for the in-cluster check),
served by the same gunicorn options, reading the body the same way and decoding it with the same
msgspec decoder (`extender.protocol`). Then it decides nothing: filter passes every node (echoing
full Node objects back in `nodes` mode), prioritize gives every node score 0.

`floor-lean`: the same answers behind the extender's own HTTP front (`extender.server.VerbRouter`,
which answers the verbs before Flask's dispatch). The extender skips Flask on its verbs; this
floor does too, so the ratio to it is the price of the policy, cache and bookkeeping alone.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from flask import Flask, Response, request

from extender import protocol as wire
from extender.errors import ProtocolError
from extender.settings import Settings

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment

JSON = "application/json"


def _filter(args: wire.ExtenderArgs) -> wire.ExtenderFilterResult:
    if args.NodeNames is None and args.Nodes is not None:
        return wire.ExtenderFilterResult(Nodes=args.Nodes)
    return wire.ExtenderFilterResult(NodeNames=args.NodeNames or [])


def _prioritize(args: wire.ExtenderArgs) -> list[wire.HostPriority]:
    return [wire.HostPriority(Host=name, Score=0) for name in wire.node_names(args)]


def create_floor_app(settings: Settings, *, lean: bool = False) -> Flask:
    """A parse-only extender answering under `settings.server.url_prefix`; with `lean`, its verbs
    are answered before Flask's dispatch, as the extender's are."""
    app = Flask("floor")
    max_body = settings.server.max_body_bytes

    def args() -> wire.ExtenderArgs:
        return wire.decode(request.stream.read(max_body + 1), wire.ExtenderArgs, max_bytes=max_body)

    def answer(payload: object) -> Response:
        return Response(wire.encode(payload), mimetype=JSON)

    prefix = settings.server.url_prefix

    @app.post(f"{prefix}/filter")
    def filter_() -> Response:
        return answer(_filter(args()))

    @app.post(f"{prefix}/prioritize")
    def prioritize() -> Response:
        return answer(_prioritize(args()))

    @app.get("/healthz")
    def healthz() -> Response:
        return answer({"status": "ok"})

    @app.errorhandler(ProtocolError)
    def bad_request(exc: ProtocolError) -> Response:
        return Response(wire.encode({"Error": str(exc)}), status=400, mimetype=JSON)

    if lean:
        # Imported here: the plain floor must not carry the extender's modules in its memory.
        from extender.server import VerbRouter, read_body

        def lean_verb(decide: Callable[[wire.ExtenderArgs], object]
                      ) -> Callable[[WSGIEnvironment], tuple[int, bytes]]:
            def serve(environ: WSGIEnvironment) -> tuple[int, bytes]:
                try:
                    body = read_body(environ, max_body)
                    return 200, wire.encode(decide(wire.decode(body, wire.ExtenderArgs)))
                except ProtocolError as exc:
                    return 400, wire.encode({"Error": str(exc)})
            return serve

        app.wsgi_app = VerbRouter(app.wsgi_app, {  # type: ignore[method-assign]
            f"{prefix}/filter": lean_verb(_filter), f"{prefix}/prioritize": lean_verb(_prioritize)})
    return app
