#!/usr/bin/env bash
# End-to-end test on a throw-away kind cluster (needs Docker, kind, kubectl and helm):
#   1. creates a cluster (one control plane, two workers),
#   2. builds the image and loads it into the cluster,
#   3. installs Prometheus with node-exporter and kube-state-metrics (kube-prometheus-stack)
#      and a Pushgateway,
#   4. applies manifests/overlays/dev and the example workload (manifests/examples),
#   5. asserts that every example pod was placed by the metrics-aware scheduler, that the
#      extender answered its filter calls (extender_requests_total on each replica's /metrics),
#      that the partition has exactly one worker per eligible node, and that Prometheus scrapes
#      every extender replica (ServiceMonitor and NetworkPolicy agree),
#   6. deletes the cluster (unless --keep).
#
# Usage: hack/kind-e2e.sh [--dry-run] [--keep]
#   --dry-run  print every command instead of running it (no tool is needed)
#   --keep     leave the cluster running for inspection (delete it with:
#              kind delete cluster --name "$CLUSTER")
# Environment: CLUSTER (extract-e2e), KIND_NODE_IMAGE (kindest/node:v1.35.0), TIMEOUT (300s),
#   KPS_CHART_VERSION / PUSHGATEWAY_CHART_VERSION (chart versions; empty: the latest).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CLUSTER=${CLUSTER:-extract-e2e}
KIND_NODE_IMAGE=${KIND_NODE_IMAGE:-kindest/node:v1.35.0}
TIMEOUT=${TIMEOUT:-300s}
KPS_CHART_VERSION=${KPS_CHART_VERSION:-}
PUSHGATEWAY_CHART_VERSION=${PUSHGATEWAY_CHART_VERSION:-}
IMAGE=extract-extender:dev # the name manifests/overlays/dev expects
# Prometheus' ServiceAccount, the subject manifests/components/monitoring/rbac.yaml binds.
PROMETHEUS_SA=kube-prometheus-stack-prometheus
DEMO_NS=extract-demo
DRY_RUN=0
KEEP=0

KIND_CONFIG='kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
nodes:
  - role: control-plane
  - role: worker
  - role: worker'

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; }

while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --keep) KEEP=1 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "kind-e2e: unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done

log() { printf '\n== %s\n' "$*" >&2; }
die() { printf 'kind-e2e: FAILED: %s\n' "$*" >&2; exit 1; }

# Commands are echoed, shell-quoted so they can be pasted, on fd 3 (the script's stdout), which
# $(...) does not capture: `--dry-run > commands.txt` keeps the whole list, checks included.
exec 3>&1
show() { { printf '+'; printf ' %q' "$@"; printf '\n'; } >&3; }

# Print a command and run it unless --dry-run.
run() {
  show "$@"
  [ "$DRY_RUN" -eq 1 ] || "$@"
}

# Like run, with $1 fed to the command's standard input.
run_stdin() {
  local input=$1; shift
  show "$@"
  printf '  <<EOF\n%s\nEOF\n' "$input" >&3
  [ "$DRY_RUN" -eq 1 ] || "$@" <<<"$input"
}

# A command whose output a check reads: printed, and under --dry-run not run (no output).
query() {
  show "$@"
  [ "$DRY_RUN" -eq 1 ] || "$@"
}

# wait_for DESCRIPTION CHECK...: retry CHECK (a shell function) every 5 s until TIMEOUT.
wait_for() {
  local what=$1; shift
  local deadline=$((SECONDS + ${TIMEOUT%s}))
  until "$@"; do
    [ "$DRY_RUN" -eq 0 ] || return 0
    [ "$SECONDS" -lt "$deadline" ] || die "timed out after $TIMEOUT waiting for: $what"
    sleep 5
  done
}

cleanup() {
  local status=$?
  if [ "$KEEP" -eq 1 ]; then
    log "keeping cluster $CLUSTER (kind delete cluster --name $CLUSTER)"
  else
    log "deleting cluster $CLUSTER"
    run kind delete cluster --name "$CLUSTER" || true
  fi
  exit "$status"
}

preflight() {
  [ "$DRY_RUN" -eq 1 ] && return 0
  local tool missing=()
  for tool in docker kind kubectl helm; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
  done
  [ ${#missing[@]} -eq 0 ] || die "missing tools: ${missing[*]} (this script needs a machine with Docker)"
  docker info >/dev/null 2>&1 || die "docker is installed but its daemon does not answer"
}

chart_version() { # --version VERSION, or nothing for the latest
  [ -z "$1" ] || printf -- '--version\n%s\n' "$1"
}

install_prometheus() {
  local kps_version pgw_version
  mapfile -t kps_version < <(chart_version "$KPS_CHART_VERSION")
  mapfile -t pgw_version < <(chart_version "$PUSHGATEWAY_CHART_VERSION")
  run helm repo add prometheus-community https://prometheus-community.github.io/helm-charts --force-update
  # Prometheus Operator + Prometheus (Service prometheus-operated, the extender's default URL),
  # node-exporter and kube-state-metrics; every ServiceMonitor/PodMonitor/PrometheusRule is
  # selected, not only the chart's own.
  run helm upgrade --install kps prometheus-community/kube-prometheus-stack "${kps_version[@]}" \
    --namespace monitoring --create-namespace --wait --timeout 10m \
    --set grafana.enabled=false --set alertmanager.enabled=false \
    --set prometheus.prometheusSpec.scrapeInterval=15s \
    --set prometheus.serviceAccount.name="$PROMETHEUS_SA" \
    --set prometheus.prometheusSpec.serviceMonitorSelectorNilUsesHelmValues=false \
    --set prometheus.prometheusSpec.podMonitorSelectorNilUsesHelmValues=false \
    --set prometheus.prometheusSpec.ruleSelectorNilUsesHelmValues=false
  # Service prometheus-pushgateway.monitoring:9091, where the deadline sidecars push; our
  # ServiceMonitor (honorLabels) scrapes it, so the chart's own stays off.
  run helm upgrade --install prometheus-pushgateway prometheus-community/prometheus-pushgateway \
    "${pgw_version[@]}" --namespace monitoring --wait --timeout 5m \
    --set serviceMonitor.enabled=false
}

# --- checks -----------------------------------------------------------------------------------

demo_pod_count() {
  query kubectl -n "$DEMO_NS" get pods -o name | wc -l
}

# Scheduled events are written by the scheduler profile that bound the pod.
check_scheduled_by_metrics_aware() {
  local pods by_us others
  pods=$(demo_pod_count)
  by_us=$(query kubectl -n "$DEMO_NS" get events.events.k8s.io --field-selector reason=Scheduled \
    -o 'jsonpath={range .items[*]}{.reportingController}{"\n"}{end}' | grep -cx metrics-aware || true)
  others=$(query kubectl -n "$DEMO_NS" get events.events.k8s.io --field-selector reason=Scheduled \
    -o 'jsonpath={range .items[*]}{.reportingController}{"\n"}{end}' | grep -cvx metrics-aware || true)
  [ "$DRY_RUN" -eq 1 ] && return 0
  echo "demo pods: $pods, scheduled by metrics-aware: $by_us, by others: $others"
  [ "$pods" -gt 0 ] && [ "$by_us" -ge "$pods" ] && [ "$others" -eq 0 ]
}

# The filter calls answered with 200, summed over every extender replica's own /metrics
# (read from inside the pod: the NetworkPolicy admits only the scheduler and Prometheus), with
# Prometheus' token (server.auth: /metrics needs one; components/monitoring/rbac.yaml grants it).
check_extender_filtered() {
  local pods pod total=0 count token
  pods=$(demo_pod_count)
  local replicas
  replicas=$(query kubectl -n extract get pods -l app.kubernetes.io/name=extender -o name)
  token=$(query kubectl -n monitoring create token "$PROMETHEUS_SA" --duration 10m)
  [ "$DRY_RUN" -eq 0 ] || replicas=pod/EXTENDER_POD # show the per-replica command once
  for pod in $replicas; do
    # The token goes in on standard input, not on a command line.
    count=$(printf '%s' "$token" | query kubectl -n extract exec "$pod" -i -c extender -- python -c \
      'import sys, urllib.request; print(urllib.request.urlopen(urllib.request.Request("http://127.0.0.1:8888/metrics", headers={"Authorization": "Bearer " + sys.stdin.read().strip()}), timeout=5).read().decode())' |
      awk '/^extender_requests_total\{/ && /verb="filter"/ && /code="200"/ { s += $NF } END { printf "%d", s }')
    total=$((total + count))
  done
  [ "$DRY_RUN" -eq 1 ] && return 0
  echo "extender filter calls answered 200: $total (demo pods: $pods)"
  [ "$total" -ge "$pods" ]
}

# Prometheus scrapes every extender replica: the ServiceMonitor and the NetworkPolicy agree.
check_prometheus_scrapes_extender() {
  local prom up replicas
  replicas=$(query kubectl -n extract get deployment extender -o 'jsonpath={.spec.replicas}')
  prom=$(query kubectl -n monitoring get pods -l app.kubernetes.io/name=prometheus -o name | head -n 1)
  [ "$DRY_RUN" -eq 0 ] || prom=pod/PROMETHEUS_POD
  # sum(up{job="extender"}), URL-encoded; the answer's value is the last quoted number.
  up=$(query kubectl -n monitoring exec "$prom" -c prometheus -- wget -qO- \
    'http://127.0.0.1:9090/api/v1/query?query=sum(up%7Bjob%3D%22extender%22%7D)' |
    sed -n 's/.*"value":\[[^,]*,"\([0-9.]*\)"\].*/\1/p')
  [ "$DRY_RUN" -eq 1 ] && return 0
  echo "extender replicas: $replicas, scraped and up: ${up:-none}"
  [ -n "$up" ] && [ "${up%.*}" -ge "$replicas" ]
}

# One worker per eligible node: every node that is not a control plane (config defaults), each
# worker on a different node, and as many workers as nodes.
check_partition_complete() {
  local nodes workers distinct
  nodes=$(query kubectl get nodes -l '!node-role.kubernetes.io/control-plane' -o name | wc -l)
  workers=$(query kubectl -n extract get pods -l app.kubernetes.io/name=partition-worker \
    -o 'jsonpath={range .items[*]}{.spec.nodeName}{"\n"}{end}')
  [ "$DRY_RUN" -eq 1 ] && return 0
  distinct=$(printf '%s\n' "$workers" | grep -v '^$' | sort -u | wc -l)
  echo "eligible nodes: $nodes, workers: $(printf '%s\n' "$workers" | grep -cv '^$'), on distinct nodes: $distinct"
  [ "$nodes" -gt 0 ] && [ "$distinct" -eq "$nodes" ] &&
    [ "$(printf '%s\n' "$workers" | grep -cv '^$')" -eq "$nodes" ]
}

main() {
  preflight
  [ "$DRY_RUN" -eq 0 ] || log "dry run: printing the commands, running none"
  trap cleanup EXIT

  log "creating kind cluster $CLUSTER ($KIND_NODE_IMAGE)"
  run_stdin "$KIND_CONFIG" kind create cluster --name "$CLUSTER" --image "$KIND_NODE_IMAGE" \
    --config - --wait 120s
  run kubectl config use-context "kind-$CLUSTER"

  log "building $IMAGE and loading it into the cluster"
  run docker build --tag "$IMAGE" "$REPO"
  run kind load docker-image "$IMAGE" --name "$CLUSTER"

  log "installing Prometheus, node-exporter, kube-state-metrics and the Pushgateway"
  install_prometheus

  log "applying manifests/overlays/dev"
  run kubectl apply --server-side -k "$REPO/manifests/overlays/dev"
  run kubectl -n extract rollout status deployment/extender --timeout "$TIMEOUT"
  run kubectl -n extract rollout status deployment/metrics-aware-scheduler --timeout "$TIMEOUT"
  run kubectl -n extract rollout status deployment/partition-controller --timeout "$TIMEOUT"

  log "scheduling the example workload through the metrics-aware scheduler"
  run kubectl apply -k "$REPO/manifests/examples"
  run kubectl -n "$DEMO_NS" rollout status deployment/metrics-aware-demo --timeout "$TIMEOUT"
  run kubectl -n "$DEMO_NS" wait --for=condition=complete job/metrics-aware-batch --timeout "$TIMEOUT"

  log "checking the placements"
  wait_for "every demo pod scheduled by metrics-aware" check_scheduled_by_metrics_aware
  wait_for "the extender's filter counters" check_extender_filtered
  wait_for "one partition worker per eligible node" check_partition_complete
  wait_for "Prometheus scraping every extender replica" check_prometheus_scrapes_extender
  run kubectl -n extract get configmap partition -o 'jsonpath={.data.partition\.yaml}'

  if [ "$DRY_RUN" -eq 1 ]; then log "dry run complete"; else log "PASSED"; fi
}

main
