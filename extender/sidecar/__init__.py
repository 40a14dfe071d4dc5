"""The deadline sidecar: counts task deadline misses next to a worker and pushes them.

events.py (typed events) -> tracker.py (state machine, verdicts) using estimate.py (pure:
expected durations, miss rule, sliding ratio) -> metrics.py (the published names) -> push.py
(Pushgateway edge) and http.py (local endpoint). tail.py and api.py are the other event sources;
service.py wires them, cli.py runs them.
"""
