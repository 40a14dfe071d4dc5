#!/usr/bin/env bash
# `make bench`: what the benchmarks need beyond `make deps` (Debian's wrk for benchmarks/http_bench.py).
set -euo pipefail
exec bash "$(dirname "$0")/install-deps.sh" --bench
