"""The Monitoring API's named metrics: ask for a metric at a level, get numbers.

    catalog.py    what a named metric is (YAML: name, unit, PromQL template per level)
    selector.py   `node=a,namespace=b,label.app=web,worker=w` -> validated, escaped PromQL filter
    query.py      current and historical values: the metrics cache or Prometheus, bounded, cached
    discovery.py  partition workers and their sidecars as Prometheus HTTP-SD / file-SD targets
    model.py      the JSON answers, shared by the server and `extender.client`
    http.py       the Flask blueprint (nested under /api/v1 by `extender.monitoring.routes`)
    openapi.py    the OpenAPI 3.1 document served at /api/v1/openapi.json

Nothing here is on the scheduling path: the verbs never import this package.
"""
