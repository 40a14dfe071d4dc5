"""Tails a JSON-lines event file, like `tail -F`: follows truncation and rotation.

One event per line, e.g. `{"event": "start", "id": "t1", "type": "fit", "ts": 1732350000.5}`
(see extender.sidecar.events). The file is read from its beginning: it belongs to one worker and
is normally created with it; a restarted sidecar replays it, which re-counts ended tasks (the
counters restart from zero anyway, and Prometheus' rate() treats the reset as such).

- Truncation (`copytruncate`, `: > file`): the file shrank below the read position -> read again
  from the start.
- Rotation (`mv file file.1`, new file created): the old file is drained first, then the new one
  is opened from its start. A missing file is waited for.
- A partial last line waits for its newline; a line longer than MAX_LINE_BYTES is dropped (and
  counted `malformed`, possibly once per MAX_LINE_BYTES read): memory stays bounded whatever is
  written.
- Bad lines are counted by reason and logged with file and line number, the first
  LOGGED_BAD_LINES only: a producer writing garbage must not flood the log.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import BinaryIO

from extender.sidecar.events import BadEvent, Event, decode_line
from extender.sidecar.tracker import Tracker

log = logging.getLogger(__name__)

MAX_LINE_BYTES = 64 * 1024
LOGGED_BAD_LINES = 10


class EventFileTailer:
    """Applies each complete line of `path` to `tracker`; `poll()` reads what was appended."""

    def __init__(self, path: Path | str, tracker: Tracker, *,
                 poll_interval_s: float = 0.2) -> None:
        self.path = Path(path)
        self._tracker = tracker
        self._poll_interval_s = poll_interval_s
        self._file: BinaryIO | None = None
        self._inode: int | None = None
        self._buffer = b""
        self._line_number = 0
        self._bad_lines = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> EventFileTailer:
        """Poll in a background thread every `poll_interval_s`."""
        self._thread = threading.Thread(target=self._loop, name="deadline-tail", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread after a last poll, and close the file."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.poll()
        if self._file is not None:
            self._file.close()
            self._file = None

    def poll(self) -> int:
        """Read and apply whatever complete lines were appended; returns how many."""
        if self._file is None and not self._open():
            return 0
        assert self._file is not None
        if os.fstat(self._file.fileno()).st_size < self._file.tell():
            log.info("%s was truncated; reading it again from the start", self.path)
            self._restart_at_top()
        applied = self._drain()
        try:
            rotated = os.stat(self.path).st_ino != self._inode
        except FileNotFoundError:
            rotated = True
        if rotated:
            # Everything the old file held was drained just above; switch when the new one exists.
            if self._open():
                log.info("%s was rotated; following the new file", self.path)
                applied += self._drain()
        return applied

    def _loop(self) -> None:
        while not self._stop.wait(self._poll_interval_s):
            self.poll()

    def _open(self) -> bool:
        try:
            handle = self.path.open("rb")
        except FileNotFoundError:
            return False
        if self._file is not None:
            self._file.close()
        self._file = handle
        self._inode = os.fstat(handle.fileno()).st_ino
        self._buffer = b""
        self._line_number = 0
        return True

    def _restart_at_top(self) -> None:
        assert self._file is not None
        self._file.seek(0)
        self._buffer = b""
        self._line_number = 0

    def _drain(self) -> int:
        assert self._file is not None
        self._buffer += self._file.read()
        *lines, self._buffer = self._buffer.split(b"\n")
        if len(self._buffer) > MAX_LINE_BYTES:
            lines.append(self._buffer)
            self._buffer = b""
        applied = 0
        for line in lines:
            self._line_number += 1
            if line.strip():
                applied += self._apply(line)
        return applied

    def _apply(self, line: bytes) -> int:
        try:
            self._tracker.apply(self._decode(line))
        except BadEvent as error:
            self._bad_lines += 1
            if self._bad_lines <= LOGGED_BAD_LINES:
                more = " (further bad lines are only counted)" \
                    if self._bad_lines == LOGGED_BAD_LINES else ""
                log.warning("%s:%d: %s%s", self.path, self._line_number, error, more)
            return 0
        return 1

    def _decode(self, line: bytes) -> Event:
        try:
            if len(line) > MAX_LINE_BYTES:
                raise BadEvent("malformed", f"line longer than {MAX_LINE_BYTES} bytes")
            return decode_line(line)
        except BadEvent as error:
            self._tracker.reject(error)  # the tracker counts only the errors it raises itself
            raise
