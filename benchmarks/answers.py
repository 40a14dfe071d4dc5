"""Is an answer one kube-scheduler would accept? Checked before every measured case.

A fast wrong answer is worth nothing, so the benchmark refuses to time a server whose answer
breaks the contract kube-scheduler enforces (see FIELD-NOTES and the fixtures' README):
- filter: status 200, no `Error`, the request's mode kept (names in, names out; full Nodes in,
  full Nodes out, echoed verbatim), only offered nodes returned, and every offered node either
  passed or failed with a reason (never dropped silently);
- prioritize: status 200, exactly one score per offered node, each an integer 0..10.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

MAX_SCORE = 10  # k8s.io/kube-scheduler/extender/v1 MaxExtenderPriority


class BadAnswer(ValueError):
    """The server's answer would be rejected or misread by kube-scheduler."""


def check_answer(verb: str, mode: str, request: bytes, status: int, body: bytes) -> str:
    """Raise BadAnswer when the answer breaks the contract; else a one-line summary."""
    if status != 200:
        raise BadAnswer(f"{verb}: HTTP {status}: {body[:300]!r}")
    try:
        answer = json.loads(body)
    except ValueError as exc:
        raise BadAnswer(f"{verb}: answer is not JSON: {exc}") from exc
    args = json.loads(request)
    if mode == "names":
        offered = list(args["NodeNames"])
        objects: dict[str, Any] = {}
    else:
        items = args["Nodes"]["items"]
        offered = [item["metadata"]["name"] for item in items]
        objects = {item["metadata"]["name"]: item for item in items}
    if verb == "filter":
        return _check_filter(mode, offered, objects, answer)
    if verb == "prioritize":
        return _check_prioritize(offered, answer)
    raise BadAnswer(f"unknown verb {verb!r}")


def _check_filter(mode: str, offered: Sequence[str], objects: dict[str, Any], answer: Any) -> str:
    if not isinstance(answer, dict):
        raise BadAnswer(f"filter: expected an ExtenderFilterResult object, got {type(answer).__name__}")
    if answer.get("Error"):
        raise BadAnswer(f"filter: Error {answer['Error']!r}")
    if mode == "names":
        if answer.get("NodeNames") is None:
            raise BadAnswer("filter: names in, but no NodeNames out (kube-scheduler would reject "
                            "every node)")
        passed = list(answer["NodeNames"])
    else:
        if answer.get("NodeNames") is not None or not isinstance(answer.get("Nodes"), dict):
            raise BadAnswer("filter: full Nodes in, but no Nodes.items out")
        items = answer["Nodes"].get("items") or []
        passed = [item["metadata"]["name"] for item in items]
        for item in items:
            if objects.get(item["metadata"]["name"]) != item:
                raise BadAnswer(f"filter: Node {item['metadata']['name']!r} not echoed verbatim")
    failed = dict(answer.get("FailedNodes") or {})
    failed.update(answer.get("FailedAndUnresolvableNodes") or {})
    offered_set = set(offered)
    strangers = (set(passed) | set(failed)) - offered_set
    if strangers:
        raise BadAnswer(f"filter: answers nodes that were not offered: {sorted(strangers)[:5]}")
    if len(passed) != len(set(passed)):
        raise BadAnswer("filter: a node passed twice")
    both = set(passed) & set(failed)
    if both:
        raise BadAnswer(f"filter: nodes both passed and failed: {sorted(both)[:5]}")
    dropped = offered_set - set(passed) - set(failed)
    if dropped:
        raise BadAnswer(f"filter: offered nodes neither passed nor failed: {sorted(dropped)[:5]}")
    if any(not isinstance(reason, str) or not reason for reason in failed.values()):
        raise BadAnswer("filter: a failed node without a reason")
    return f"{len(passed)} passed, {len(failed)} failed"


def _check_prioritize(offered: Sequence[str], answer: Any) -> str:
    if not isinstance(answer, list):
        raise BadAnswer(f"prioritize: expected a HostPriorityList, got {type(answer).__name__}")
    hosts = [entry.get("Host") for entry in answer]
    if sorted(hosts) != sorted(offered):
        missing, extra = set(offered) - set(hosts), set(hosts) - set(offered)
        raise BadAnswer(f"prioritize: hosts differ from the offered nodes (missing "
                        f"{sorted(missing)[:5]}, not offered {sorted(extra)[:5]}, or duplicates)")
    scores = [entry.get("Score") for entry in answer]
    bad = [s for s in scores if type(s) is not int or not 0 <= s <= MAX_SCORE]
    if bad:
        raise BadAnswer(f"prioritize: scores outside 0..{MAX_SCORE}: {bad[:5]}")
    return f"scores {min(scores, default=0)}..{max(scores, default=0)}"
