"""Trace-driven simulator: the OpenB saturation experiment and a replay with modelled usage.

It runs the same policy code as the extender (`extender.policies`), never a copy: the baselines
in `policies.allocation` and `policies.fragmentation`, and the metrics-aware engine fed a NodeTable
built from the lagged usage model (`sim.models`).
"""
