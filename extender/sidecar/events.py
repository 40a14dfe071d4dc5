"""Task events as they arrive (HTTP bodies, event-file lines), typed and validated at the boundary.

Two events: `TaskStart {"id", "type", "expected_seconds"?, "ts"?}` and `TaskEnd {"id", "ts"?}`.
In the event file each line also carries `"event": "start"` or `"event": "end"`. `ts` is the
event's Unix time in seconds, for producers that record events before they reach the sidecar;
without it the sidecar's clock stamps the event on arrival.

Unknown fields are errors: a typo such as `expected_second` must not silently fall back to the
learned estimate. Every rejected event raises `BadEvent` with a short `reason`, the label of
`deadline_bad_events_total{reason}`:

    malformed          not JSON, or not a JSON object
    missing_field      a required field is absent
    invalid_field      a field has the wrong type or range (empty id, expected_seconds <= 0)
    unknown_field      a field this format does not know
    end_without_start  an end whose id is not running (unknown, or already ended)
    duplicate_id       a start whose id is already running
    clock_backwards    an end stamped before its start
    too_many_running   a start beyond `max_running` tasks in flight (bounded memory)
"""

from __future__ import annotations

from typing import Annotated, Literal, TypeVar

import msgspec

from extender.errors import ExtenderError

Reason = Literal[
    "malformed", "missing_field", "invalid_field", "unknown_field", "end_without_start",
    "duplicate_id", "clock_backwards", "too_many_running",
]
REASONS: tuple[Reason, ...] = (
    "malformed", "missing_field", "invalid_field", "unknown_field", "end_without_start",
    "duplicate_id", "clock_backwards", "too_many_running",
)

# Bounds keep one running task at a few hundred bytes whatever a producer sends.
TaskId = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
TaskType = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
Seconds = Annotated[float, msgspec.Meta(gt=0)]
Timestamp = Annotated[float, msgspec.Meta(ge=0)]


class BadEvent(ExtenderError):
    """An event that cannot be applied; `reason` is one of REASONS."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason: Reason = reason


class TaskStart(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag="start",
                tag_field="event"):
    """A task of `type` (its signature, e.g. the function name) started."""

    id: TaskId
    type: TaskType
    expected_seconds: Seconds | None = None
    """The producer's own expectation; a profile entry for the type wins over it."""
    ts: Timestamp | None = None


class TaskEnd(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag="end",
              tag_field="event"):
    """The task `id` ended (successfully or not: the deadline only concerns its duration)."""

    id: TaskId
    ts: Timestamp | None = None


Event = TaskStart | TaskEnd
T = TypeVar("T")

_START = msgspec.json.Decoder(TaskStart)
_END = msgspec.json.Decoder(TaskEnd)
_LINE: msgspec.json.Decoder[Event] = msgspec.json.Decoder(Event)


def decode_start(body: bytes | str) -> TaskStart:
    """A TaskStart from an HTTP body; BadEvent on anything else."""
    return _decode(_START, body)


def decode_end(body: bytes | str) -> TaskEnd:
    """A TaskEnd from an HTTP body; BadEvent on anything else."""
    return _decode(_END, body)


def decode_line(line: bytes | str) -> Event:
    """One event-file line, tagged by its `event` field; BadEvent on anything else."""
    return _decode(_LINE, line)


def _decode(decoder: msgspec.json.Decoder[T], body: bytes | str) -> T:
    try:
        return decoder.decode(body)
    except msgspec.DecodeError as exc:
        if isinstance(exc, msgspec.ValidationError):
            raise BadEvent(_classify(str(exc)), f"invalid event: {exc}") from exc
        raise BadEvent("malformed", f"invalid event: {exc}") from exc


def _classify(message: str) -> Reason:
    if message.startswith("Object missing required field"):
        return "missing_field"
    if message.startswith("Object contains unknown field"):
        return "unknown_field"
    if message.startswith("Expected `object`"):
        return "malformed"
    return "invalid_field"
