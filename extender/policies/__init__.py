"""Policies: pure functions of (pod, node table, settings) -> filter verdicts and scores.

No I/O here (an import-linter contract forbids flask, kubernetes, requests and the Prometheus
client), so the webhook and the simulator run exactly the same code.
"""
