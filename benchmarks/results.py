"""Write one benchmark's section of benchmarks/RESULTS.md, leaving the others untouched.

Every section records the command, the date, the machine and the figures, with the ratio to the
baseline measured in the same run.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")
HEADER = (
    "# Benchmark results\n\n"
    "Written by the benchmarks themselves (`make bench` runs them all); each section is replaced\n"
    "by the run that produced it. Figures are from the machine named in the section.\n"
)


def machine() -> str:
    """A one-line description of this machine."""
    mem_gib = ""
    try:
        with open("/proc/meminfo") as fh:
            kib = int(fh.readline().split()[1])
        mem_gib = f", {kib / 1024 / 1024:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    cpu = platform.processor() or platform.machine()
    return (f"{platform.system()} {platform.machine()} ({cpu}), {os.cpu_count()} cores{mem_gib}, "
            f"Python {platform.python_version()}")


def write_section(name: str, title: str, command: str, body: str) -> Path:
    """Replace (or append) the section `name` of RESULTS.md with `body` (markdown)."""
    begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    section = (
        f"{begin}\n## {title}\n\n"
        f"- command: `{command}`\n- date: {now}\n- machine: {machine()}\n\n"
        f"{body.rstrip()}\n{end}"
    )
    text = RESULTS.read_text() if RESULTS.exists() else HEADER
    if begin in text and end in text:
        head, _, rest = text.partition(begin)
        _, _, tail = rest.partition(end)
        text = head + section + tail
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    RESULTS.write_text(text)
    return RESULTS


def markdown_table(headers: list[str], rows: list[list[object]]) -> str:
    """A GitHub-flavoured markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)
