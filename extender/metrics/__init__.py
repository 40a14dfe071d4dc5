"""Metrics: what to ask (catalog), how to ask (prometheus), when to ask and what we know (cache)."""
