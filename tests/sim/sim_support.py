"""Builders of small hand-made clusters and traces for the simulator tests."""

from __future__ import annotations

import numpy as np

from extender.openb import Nodes, Pods


def make_nodes(specs: list[tuple[int, int, int, str]]) -> Nodes:
    """Nodes from (cpu_milli, memory_mib, gpus, model) tuples."""
    models: dict[str, int] = {}
    model = [models.setdefault(m, len(models)) if g else -1 for _, _, g, m in specs]
    return Nodes(tuple(f"node-{i}" for i in range(len(specs))),
                 np.array([s[0] for s in specs], np.int64), np.array([s[1] for s in specs], np.int64),
                 np.array([s[2] for s in specs], np.int64), np.array(model, np.int64), tuple(models))


def make_pods(specs: list[tuple[int, int, int, int]], *, times: list[tuple[float, float]] | None = None,
              qos: str = "BE") -> Pods:
    """Pods from (cpu_milli, memory_mib, num_gpu, gpu_milli) tuples, optional (start, end)."""
    n = len(specs)
    created = np.array([t[0] for t in times], float) if times else np.full(n, np.nan)
    deleted = np.array([t[1] for t in times], float) if times else np.full(n, np.nan)
    return Pods(tuple(f"pod-{i}" for i in range(n)), np.array([s[0] for s in specs], np.int64),
                np.array([s[1] for s in specs], np.int64), np.array([s[2] for s in specs], np.int64),
                np.array([s[3] for s in specs], np.int64), tuple(() for _ in specs),
                tuple(qos for _ in specs), created, deleted)
