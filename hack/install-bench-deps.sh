#!/usr/bin/env bash
# Installs Debian's `wrk` (the HTTP load generator of benchmarks/http_bench.py) when missing.
# Only `make bench` needs it; without it the benchmark falls back to a slower Python client, so a
# failure here is a warning, not an error.
set -euo pipefail

command -v wrk >/dev/null 2>&1 && exit 0

if [ "$(id -u)" -eq 0 ]; then
  sudo=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  sudo=(sudo -n)
else
  echo "warning: wrk is not installed and cannot be (not root, no passwordless sudo);" >&2
  echo "         the HTTP benchmark will use its slower Python client. apt-get install wrk" >&2
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "warning: wrk is not installed and this system has no apt-get; the HTTP benchmark will" >&2
  echo "         use its slower Python client. Install wrk from your distribution." >&2
  exit 0
fi
echo "installing Debian package: wrk" >&2
export DEBIAN_FRONTEND=noninteractive
if ! { "${sudo[@]}" apt-get install -y -qq --no-install-recommends wrk >/dev/null 2>&1 ||
       { "${sudo[@]}" apt-get update -qq && \
         "${sudo[@]}" apt-get install -y -qq --no-install-recommends wrk >/dev/null; }; }; then
  echo "warning: installing wrk failed; the HTTP benchmark will use its Python client." >&2
fi
exit 0
