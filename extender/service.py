"""The extender's verbs, without HTTP: wire args in, wire results out.

Ties together the cache (what we know), the policy engine (what we think), the decision log (why)
and the Kubernetes edge (bind, events). `server.py` only maps HTTP onto these methods.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable
from typing import Protocol

from extender import protocol as wire
from extender.errors import ProtocolError
from extender.informer import BoundPod, InformerStatus
from extender.metrics.cache import MetricsCache
from extender.policies.engine import Engine, Outcome
from extender.policies.explain import (
    TOP_NODES,
    Breakdown,
    Decision,
    DecisionLog,
    DecisionRecord,
    rejected_summary,
)
from extender.policies.model import PodDemand, pod_demand
from extender.settings import Settings

log = logging.getLogger(__name__)


class Binder(Protocol):
    """Creates the Binding of a pod to a node, and reads pods (the Kubernetes API edge)."""

    def bind(self, namespace: str, name: str, uid: str, node: str) -> None: ...

    def read(self, namespace: str, name: str) -> wire.Pod | None: ...


class EventSink(Protocol):
    """Writes a decision summary as a Kubernetes Event on the pod (best effort, asynchronous)."""

    def decision(self, decision: DecisionRecord) -> None: ...


class Observer(Protocol):
    """Receives per-decision facts for our own /metrics."""

    def rejected(self, code: str, nodes: int) -> None: ...

    def placement(self, source: str) -> None: ...


class BoundPods(Protocol):
    """Pods bound to nodes, from the API server (`extender.informer.PodInformer`)."""

    def subscribe(self, listener: Callable[[BoundPod, bool], None]) -> None: ...

    def status(self) -> InformerStatus: ...


class Extender:
    """filter / prioritize / bind / preempt over the current snapshot."""

    def __init__(self, settings: Settings, cache: MetricsCache, engine: Engine, *,
                 binder: Binder | None = None, events: EventSink | None = None,
                 observer: Observer | None = None, bound_pods: BoundPods | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.cache = cache
        self.engine = engine
        self.binder = binder
        self.events = events
        self.observer = observer
        self.clock = clock
        self.decisions = DecisionLog(settings.server.decision_log_size)
        self.bound_pods = bound_pods
        if bound_pods is not None:
            bound_pods.subscribe(self._on_bound_pod)

    def _on_bound_pod(self, pod: BoundPod, bound: bool) -> None:
        """The API server's view of a pod, merged into the placement ledger by UID: every
        replica and worker then counts the same pods, whoever bound them (informer thread)."""
        if not bound:
            self.engine.ledger.forget(pod.uid)
            return
        if pod.bound_at < self.clock() - self.engine.ledger.window_s:
            return  # bound long ago: the metrics show it
        demand = PodDemand(namespace=pod.namespace, name=pod.name, uid=pod.uid,
                           cpu_cores=pod.cpu_cores, memory_bytes=pod.memory_bytes, gpus=pod.gpus,
                           owner_kind=pod.owner_kind or "", owner_name=pod.owner_name or "")
        demand = self.engine.estimate(demand, self.cache.current().table)
        if self.engine.record_placement(pod.node, demand, pod.bound_at, confirmed=True) \
                and self.observer is not None:
            self.observer.placement("informer")

    def _pod(self, pod: wire.Pod | None) -> PodDemand:
        if pod is None:
            raise ProtocolError("Pod is required")
        policy = self.settings.policy
        try:
            return pod_demand(pod, policy_annotation=policy.policy_annotation,
                              weights_annotation=policy.weights_annotation)
        except ValueError as exc:
            raise ProtocolError(f"pod {pod.metadata.namespace}/{pod.metadata.name}: {exc}") from exc

    def _evaluate(self, args: wire.ExtenderArgs) -> tuple[PodDemand, list[str], Outcome, float]:
        table = self.cache.current().table
        pod = self.engine.estimate(self._pod(args.Pod), table)
        names = wire.node_names(args)
        now = self.clock()
        outcome = self.engine.decide(pod, table, names, now)
        return pod, names, outcome, now

    def _record(self, verb: str, pod: PodDemand, outcome: Outcome, chosen: str | None,
                now: float, started: float, explained: list[int]) -> DecisionRecord:
        """Log the decision with the breakdown of the candidates at `explained`."""
        head = Decision(
            id=self.decisions.next_id(), time=now, verb=verb, pod=pod.key, uid=pod.uid,
            profile=outcome.profile, note=outcome.note, shadow=self.settings.server.shadow,
            candidates=len(outcome.names), chosen=chosen, rejected=rejected_summary(outcome),
            nodes=[], duration_ms=round((time.perf_counter() - started) * 1e3, 3),
            estimate=pod.estimate)
        decision = DecisionRecord(head, Breakdown.of(outcome, explained))
        self.decisions.add(decision)
        if self.events is not None:
            self.events.decision(decision)
        return decision

    def filter(self, args: wire.ExtenderArgs) -> wire.ExtenderFilterResult:
        """Drop nodes that fail a threshold, with a readable reason for each."""
        started = time.perf_counter()
        pod, names, outcome, now = self._evaluate(args)
        if self.observer is not None:
            for code, nodes in collections.Counter(
                    r.code for r in outcome.rejected.values()).items():
                self.observer.rejected(code, nodes)
        if self.settings.server.shadow:
            passed, failed = list(names), {}
        else:
            passed = outcome.passed
            failed = {node: r.message for node, r in outcome.rejected.items()}
        chosen = None
        # A filter decision explains what it decided: the nodes it rejected (the first few), and
        # the node it placed the pod on when only that one passed. Ranking the others is
        # prioritize's decision, explained there.
        explained = outcome.rejected_indices(TOP_NODES)
        if len(passed) == 1 and not self.settings.server.shadow:
            # kube-scheduler skips prioritize when one node is feasible: this is the placement
            # (with bind served, bind records it).
            chosen = passed[0]
            explained.insert(0, names.index(chosen))
            if not self.settings.server.bind_enabled:
                self._placed(chosen, pod, now, "filter")
        self._record("filter", pod, outcome, chosen, now, started, explained)
        return wire.filter_result(args, names, passed, failed)

    def prioritize(self, args: wire.ExtenderArgs) -> list[wire.HostPriority]:
        """Score every candidate 0..10; the winner is remembered as a recent placement."""
        started = time.perf_counter()
        pod, names, outcome, now = self._evaluate(args)
        top = outcome.ranking(TOP_NODES)
        chosen = names[top[0]] if top else None
        if self.settings.server.shadow:
            result = [wire.HostPriority(Host=name, Score=0) for name in names]
        else:
            result = [wire.HostPriority(Host=name, Score=score)
                      for name, score in zip(names, outcome.scores, strict=True)]
            if chosen is not None and not self.settings.server.bind_enabled:
                # Without bind we do not learn the final node; our favourite is the best guess
                # (kube-scheduler adds its own plugin scores). With bind, bind records it.
                self._placed(chosen, pod, now, "prioritize")
        self._record("prioritize", pod, outcome, chosen, now, started, top)
        return result

    def bind(self, args: wire.ExtenderBindingArgs) -> wire.ExtenderBindingResult:
        """Create the Binding through the API and record the placement."""
        if self.binder is None:
            return wire.ExtenderBindingResult(Error="bind is not enabled on this extender")
        if not (args.PodName and args.PodNamespace and args.Node):
            raise ProtocolError("PodName, PodNamespace and Node are required")
        try:
            self.binder.bind(args.PodNamespace, args.PodName, args.PodUID, args.Node)
        except Exception as exc:  # noqa: BLE001 - any API failure is reported to kube-scheduler
            log.warning("bind %s/%s -> %s failed: %s", args.PodNamespace, args.PodName,
                        args.Node, exc)
            return wire.ExtenderBindingResult(Error=f"binding failed: {exc}")
        # The bind call carries no resources, and this replica may never have seen the pod: its
        # requests and owner come from the API server. Without them nothing is recorded (the
        # pod informer, where it runs, still counts the pod) rather than a placement of nothing.
        try:
            found = self.binder.read(args.PodNamespace, args.PodName)
        except Exception as exc:  # noqa: BLE001 - the pod is bound; only its accounting is lost
            log.warning("bound %s/%s but could not read it back: %s", args.PodNamespace,
                        args.PodName, exc)
            found = None
        if found is not None:
            pod = self.engine.estimate(self._pod(found), self.cache.current().table)
            self._placed(args.Node, pod, self.clock(), "bind")
        return wire.ExtenderBindingResult()

    def preempt(self, args: wire.ExtenderPreemptionArgs) -> wire.ExtenderPreemptionResult:
        """Accept kube-scheduler's candidates unchanged, minus nodes our filter rejects."""
        victims = wire.meta_victims(args)
        if args.Pod is None or not victims:
            return wire.ExtenderPreemptionResult(NodeNameToMetaVictims=victims)
        pod = self._pod(args.Pod)
        names = sorted(victims)
        outcome = self.engine.decide(pod, self.cache.current().table, names, self.clock())
        if self.settings.server.shadow:
            return wire.ExtenderPreemptionResult(NodeNameToMetaVictims=victims)
        # Evicting pods to land on a node our filter would reject gains nothing.
        kept = {node: v for node, v in victims.items() if node not in outcome.rejected}
        return wire.ExtenderPreemptionResult(NodeNameToMetaVictims=kept)

    def _placed(self, node: str, pod: PodDemand, now: float, source: str) -> None:
        recorded = self.engine.record_placement(node, pod, now, confirmed=source == "bind")
        if recorded and self.observer is not None:
            self.observer.placement(source)
