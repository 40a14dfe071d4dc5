"""Pod informer: CPU time and memory against a real kube-apiserver holding many nodes and pods.

A real etcd + kube-apiserver (tests/controlplane.py, binaries from ../shared/k8s) is filled with
`--nodes` Nodes and `--pods` bound pods (two containers with requests, labels, a ReplicaSet owner),
then, for each client in turn, a child process lists everything, and watches while the parent
drives `--rate` pod events per second for `--seconds` (one third each: bound pods created, status
updates, deletions). The child measures itself (getrusage: user + system CPU, peak RSS) and reports.

Clients:
- `informer`: extender.informer.PodInformer with the shipped settings (paginated raw lists,
  msgspec decoding, a map of BoundPods).
- `plain client`: the baseline, the official client used plainly: one list_pod_for_all_namespaces
  (same field selector) into V1Pod models, then kubernetes.watch.Watch().stream() from its
  resourceVersion, counting events and keeping the V1Pods by UID (what any cache must keep).

    python -m benchmarks.informer_bench [--nodes 5000 --pods 50000 --rate 100 --seconds 30]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests

from benchmarks.results import markdown_table, write_section
from tests.controlplane import ControlPlane, find_binaries

NAMESPACES = 10
OWNERS_PER_NAMESPACE = 50
FIELD_SELECTOR = "spec.nodeName!=,status.phase!=Succeeded,status.phase!=Failed"
POPULATE_THREADS = 12


# --- the cluster --------------------------------------------------------------------------------

class Api:
    """Raw JSON requests to the API server from a few threads (one keep-alive session each)."""

    def __init__(self, plane: ControlPlane) -> None:
        self.plane = plane
        self.local = threading.local()

    def session(self) -> requests.Session:
        session: requests.Session | None = getattr(self.local, "session", None)
        if session is None:
            session = requests.Session()
            session.trust_env = False  # REQUESTS_CA_BUNDLE would replace the API server's CA
            session.verify = str(self.plane.ca_file)
            session.headers["Authorization"] = f"Bearer {self.plane.admin_token}"
            self.local.session = session
        return session

    def call(self, method: str, path: str, body: Any = None, content_type: str = "application/json",
             *, accept: tuple[int, ...] = ()) -> None:
        """One request; an answer >= 300 not in `accept` is a RuntimeError."""
        answer = self.session().request(method, f"{self.plane.url}{path}",
                                        data=None if body is None else json.dumps(body),
                                        headers={"Content-Type": content_type}, timeout=60)
        if answer.status_code >= 300 and answer.status_code not in accept:
            raise RuntimeError(f"{method} {path}: {answer.status_code} {answer.text[:300]}")


def node_body(i: int) -> dict[str, Any]:
    name = f"node-{i:05d}"
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": {
        "kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
        "topology.kubernetes.io/zone": f"z{i % 3}"}}}


OWNER_UIDS = [[str(uuid.uuid4()) for _ in range(OWNERS_PER_NAMESPACE)] for _ in range(NAMESPACES)]


def pod_body(i: int, nodes: int) -> tuple[str, dict[str, Any]]:
    """(namespace, Pod) number i: a ReplicaSet's pod bound to a node, about 1.5 kB as sent."""
    ns, owner = i % NAMESPACES, (i // NAMESPACES) % OWNERS_PER_NAMESPACE
    app = f"svc-{owner:02d}"
    container = {"image": "registry.example/app:1.2.3", "env": [
        {"name": "LOG_LEVEL", "value": "info"}, {"name": "REGION", "value": "eu-west"},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
        "ports": [{"containerPort": 8080, "name": "http"}]}
    return f"bench-{ns}", {"apiVersion": "v1", "kind": "Pod", "metadata": {
        "name": f"{app}-{i:06d}", "labels": {"app": app, "pod-template-hash": "7d9f8c6b5"},
        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": f"{app}-7d9f8c6b5",
                             "uid": OWNER_UIDS[ns][owner], "controller": True}]},
        "spec": {"nodeName": f"node-{i % nodes:05d}", "automountServiceAccountToken": False,
                 "terminationGracePeriodSeconds": 0, "containers": [
                     {"name": "main", **container, "resources": {
                         "requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "2Gi"}}},
                     {"name": "proxy", **container, "resources": {
                         "requests": {"cpu": "100m", "memory": "128Mi"}}}]}}


def populate(api: Api, nodes: int, pods: int, budget_s: float) -> tuple[int, float]:
    """Create the namespaces, nodes and pods; stop creating pods after `budget_s`. Returns
    (pods created, seconds)."""
    started = time.monotonic()
    for ns in range(NAMESPACES):
        api.call("POST", "/api/v1/namespaces", {"metadata": {"name": f"bench-{ns}"}})
        # 409: kube-controller-manager, when running, creates `default` itself.
        api.call("POST", f"/api/v1/namespaces/bench-{ns}/serviceaccounts",
                 {"metadata": {"name": "default"}}, accept=(409,))
    with ThreadPoolExecutor(POPULATE_THREADS) as pool:
        list(pool.map(lambda i: api.call("POST", "/api/v1/nodes", node_body(i)), range(nodes)))
        print(f"  {nodes} nodes in {time.monotonic() - started:.0f} s", flush=True)
        deadline = time.monotonic() + budget_s
        created = 0
        batch = 2000
        while created < pods and time.monotonic() < deadline:
            todo = range(created, min(created + batch, pods))
            list(pool.map(lambda i: create_pod(api, i, nodes), todo))
            created += len(todo)
            print(f"  {created} pods after {time.monotonic() - started:.0f} s", flush=True)
    return created, time.monotonic() - started


def create_pod(api: Api, i: int, nodes: int) -> None:
    ns, body = pod_body(i, nodes)
    api.call("POST", f"/api/v1/namespaces/{ns}/pods", body)


class Churn:
    """Pod changes at a steady rate: create a bound pod, mark an existing one Running, delete the
    oldest, in turn. Remembers where it stopped, so consecutive runs touch only existing pods."""

    def __init__(self, api: Api, pods: int, nodes: int) -> None:
        self.api, self.nodes = api, nodes
        self.oldest, self.newest = 0, pods

    def run(self, rate: float, seconds: float) -> int:
        """Make `rate` changes per second for `seconds`; returns the number made."""
        made = 0
        started = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            futures = []
            while time.monotonic() - started < seconds:
                futures.append(pool.submit(self.change, *self.next(made % 3)))
                made += 1
                delay = started + made / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            for future in futures:
                future.result()
        return made

    def next(self, kind: int) -> tuple[int, int]:
        """(kind, pod number) of the next change; kept in the driving thread."""
        if kind == 0:
            self.newest += 1
            return kind, self.newest - 1
        if kind == 1:  # a pod far from both the deletion and the creation front
            return kind, (self.oldest + self.newest) // 2
        self.oldest += 1
        return kind, self.oldest - 1

    def change(self, kind: int, number: int) -> None:
        if kind == 0:
            create_pod(self.api, number, self.nodes)
            return
        ns, body = pod_body(number, self.nodes)
        path = f"/api/v1/namespaces/{ns}/pods/{body['metadata']['name']}"
        if kind == 1:
            self.api.call("PATCH", f"{path}/status", {"status": {"phase": "Running"}},
                          "application/merge-patch+json")
        else:
            self.api.call("DELETE", f"{path}?gracePeriodSeconds=0")


# --- the child: one client, measuring itself ----------------------------------------------------

def _usage() -> dict[str, float]:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    rss_kib = 0
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                rss_kib = int(line.split()[1])
    return {"cpu_s": ru.ru_utime + ru.ru_stime, "rss_mb": rss_kib / 1024, "peak_mb": ru.ru_maxrss / 1024}


def _report(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


def child(client: str, url: str, ca_file: str, token: str) -> None:
    """Run `client` until a line arrives on stdin; report JSON lines on stdout."""
    import kubernetes.client

    configuration = kubernetes.client.Configuration()
    configuration.host, configuration.ssl_ca_cert = url, ca_file
    configuration.api_key = {"authorization": token}
    configuration.api_key_prefix = {"authorization": "Bearer"}
    _report(phase="imported", **_usage())
    started = time.monotonic()
    if client == "informer":
        count, stop = run_informer(configuration)
    else:
        count, stop = run_plain(configuration)
    _report(phase="synced", wall_s=time.monotonic() - started, objects=count(), **_usage())
    sys.stdin.readline()
    _report(phase="done", objects=count(), **_usage(), **stop())


def run_informer(configuration: Any) -> tuple[Callable[[], int], Callable[[], dict[str, Any]]]:
    import kubernetes.client

    from extender.informer import PodInformer
    from extender.settings import load_settings

    settings = load_settings(Path(__file__).resolve().parents[1] / "config" / "extender.yaml",
                             environ={}, overrides={"informer": {"enabled": True}}).informer
    informer = PodInformer(settings, lambda: kubernetes.client.ApiClient(configuration)).start()
    if not informer.wait_synced(600):
        raise RuntimeError(f"informer not synced: {informer.status()}")

    def stop() -> dict[str, Any]:
        status = informer.status()
        since = time.time() - 10
        t0 = time.perf_counter()
        recent = informer.bound_since(since)
        query_us = (time.perf_counter() - t0) * 1e6
        informer.stop()
        return {"events": status.events, "errors": status.errors, "relists": status.relists,
                "bound_since_10s": len(recent), "bound_since_us": query_us}

    return lambda: informer.status().pods, stop


def run_plain(configuration: Any) -> tuple[Callable[[], int], Callable[[], dict[str, Any]]]:
    import kubernetes.client
    import kubernetes.watch

    api = kubernetes.client.CoreV1Api(kubernetes.client.ApiClient(configuration))
    listed = api.list_pod_for_all_namespaces(field_selector=FIELD_SELECTOR)
    pods = {p.metadata.uid: p for p in listed.items}
    counters = {"events": 0}
    watch = kubernetes.watch.Watch()

    stopping = threading.Event()

    def loop() -> None:
        try:
            for event in watch.stream(api.list_pod_for_all_namespaces, field_selector=FIELD_SELECTOR,
                                      resource_version=listed.metadata.resource_version):
                counters["events"] += 1
                obj = event["object"]
                if event["type"] == "DELETED":
                    pods.pop(obj.metadata.uid, None)
                else:
                    pods[obj.metadata.uid] = obj
        except Exception:
            if not stopping.is_set():  # Watch.stop() shuts the socket: the stream then fails
                raise

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()

    def stop() -> dict[str, Any]:
        stopping.set()
        watch.stop()
        return {"events": counters["events"], "errors": 0, "relists": 0}

    return lambda: len(pods), stop


# --- the parent ---------------------------------------------------------------------------------

def measure(plane: ControlPlane, churn: Churn, client: str, rate: float,
            seconds: float) -> tuple[dict[str, Any], int]:
    """Start a child running `client`, churn, and return its reports merged, and the changes made."""
    reports = {}
    with subprocess.Popen(
            [sys.executable, "-m", "benchmarks.informer_bench", "--child", client, plane.url,
             str(plane.ca_file), plane.admin_token],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            cwd=Path(__file__).resolve().parents[1], env={**os.environ, "PYTHONPATH": "."}) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        try:
            for phase in ("imported", "synced"):
                line = proc.stdout.readline()
                if not line:
                    raise RuntimeError(f"{client} child exited with {proc.wait()}")
                reports[phase] = json.loads(line)
                assert reports[phase]["phase"] == phase, reports[phase]
            made = churn.run(rate, seconds)
            time.sleep(2.0)  # let the last events arrive
            proc.stdin.write("stop\n")
            proc.stdin.flush()
            reports["done"] = json.loads(proc.stdout.readline())
        finally:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    imported, synced, done = reports["imported"], reports["synced"], reports["done"]
    return {
        "client": client, "sync_wall_s": synced["wall_s"], "objects_synced": synced["objects"],
        "sync_cpu_s": synced["cpu_s"] - imported["cpu_s"], "watch_cpu_s": done["cpu_s"] - synced["cpu_s"],
        "rss_after_sync_mb": synced["rss_mb"], "rss_import_mb": imported["rss_mb"],
        "peak_mb": done["peak_mb"], "rss_end_mb": done["rss_mb"], "events": done["events"],
        "objects_end": done["objects"], "errors": done["errors"], "relists": done["relists"],
        "bound_since_10s": done.get("bound_since_10s"), "bound_since_us": done.get("bound_since_us"),
    }, made


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=5000)
    parser.add_argument("--pods", type=int, default=50000)
    parser.add_argument("--rate", type=float, default=100.0, help="pod changes per second")
    parser.add_argument("--seconds", type=float, default=20.0, help="of changes per client")
    parser.add_argument("--populate-budget", type=float, default=200.0,
                        help="stop creating pods after this many seconds (the count is reported)")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--child", nargs=4, metavar=("CLIENT", "URL", "CA", "TOKEN"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return 0

    bin_dir, reason = find_binaries()
    if bin_dir is None:
        print(f"informer benchmark skipped: {reason}", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="informer-bench-") as tmp:
        plane = ControlPlane.start(bin_dir, Path(tmp), apiserver_args=[
            "--max-requests-inflight=1000", "--max-mutating-requests-inflight=500"])
        try:
            api = Api(plane)
            pods, populate_s = populate(api, args.nodes, args.pods, args.populate_budget)
            print(f"populated: {args.nodes} nodes, {pods} pods in {populate_s:.0f} s", flush=True)
            rows, churn = [], Churn(api, pods, args.nodes)
            for client in ("informer", "plain client"):
                result, made = measure(plane, churn, client, args.rate, args.seconds)
                result["changes"] = made
                rows.append(result)
                print(json.dumps(result), flush=True)
        finally:
            plane.stop()
    ours, base = rows
    table = markdown_table(
        ["client", "pods listed", "list + decode (s wall)", "list CPU (s)", "RSS after list (MB)",
         "peak RSS (MB)", "watch events", "watch CPU (s)", "CPU per 1000 events (s)", "watch CPU share"],
        [[r["client"], r["objects_synced"], f"{r['sync_wall_s']:.1f}", f"{r['sync_cpu_s']:.2f}",
          f"{r['rss_after_sync_mb']:.0f}", f"{r['peak_mb']:.0f}", r["events"], f"{r['watch_cpu_s']:.2f}",
          f"{1000 * r['watch_cpu_s'] / max(r['events'], 1):.2f}",
          f"{100 * r['watch_cpu_s'] / (args.seconds + 2):.1f}%"] for r in rows])
    per_event = [r["watch_cpu_s"] / max(r["events"], 1) for r in rows]
    ratios = (f"Informer / plain client: list CPU {ours['sync_cpu_s'] / base['sync_cpu_s']:.2f}x, "
              f"RSS after list {ours['rss_after_sync_mb'] / base['rss_after_sync_mb']:.2f}x, "
              f"peak RSS {ours['peak_mb'] / base['peak_mb']:.2f}x, "
              f"CPU per watch event {per_event[0] / max(per_event[1], 1e-9):.2f}x.")
    print(table)
    print(ratios)
    if args.no_write:
        return 0
    body = (f"{table}\n\n{ratios}\n\n"
            f"A real etcd + kube-apiserver (`../shared/k8s`) holding {args.nodes} Nodes and {pods} bound "
            f"pods (of {args.pods} asked; created in {populate_s:.0f} s), 10 namespaces, two containers "
            f"per pod with requests, a ReplicaSet owner. Each client runs in its own child process "
            f"(getrusage: user + system CPU, peak RSS = ru_maxrss; RSS after list = VmRSS) and lists "
            f"every bound pod, then watches for {args.seconds:.0f} s while the parent makes "
            f"{args.rate:.0f} pod changes per second (a third each: bound pod created, status update, "
            f"deletion; a deletion is two events, MODIFIED then DELETED). *Informer*: "
            f"`extender.informer.PodInformer`, shipped settings (paginated raw lists of 500, "
            f"msgspec). *Plain client*: one `list_pod_for_all_namespaces` into "
            f"V1Pod models, then `kubernetes.watch.Watch().stream()`, keeping the V1Pods by UID. "
            f"CPU excludes the imports (the child measures from after them); RSS is the whole "
            f"process, of which the imports are {ours['rss_import_mb']:.0f} MB (informer) and "
            f"{base['rss_import_mb']:.0f} MB (plain). "
            f"Informer after the churn: {ours['objects_end']} pods, {ours['errors']} errors, "
            f"{ours['relists']} relists; `bound_since(now - 10 s)` returned {ours['bound_since_10s']} pods "
            f"in {ours['bound_since_us']:.0f} us. The API server and both clients share the machine's "
            f"cores (other jobs ran too): CPU seconds are the figure to compare, wall times are indicative.")
    write_section("informer", "Pod informer: CPU and memory at scale (real kube-apiserver)",
                  "python -m benchmarks.informer_bench", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
