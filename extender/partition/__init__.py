"""The partition controller: one pinned, right-sized worker pod per eligible node.

`plan` is the pure core (observed nodes and workers -> actions), `reconcile` the Kubernetes API
edge, `leader` the Lease-based leader election, `cli` the `extender partition` command.
"""
