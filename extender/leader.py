"""Leader election on a coordination.k8s.io/v1 Lease, with a clean hand-over on shutdown (used by
the partition controller and the rebalancer), and the API client they connect with.

Design decisions:
- Built on `kubernetes.leaderelection` (LeaseLock, 37.x) rather than a copy of it. Its gaps are
  closed here: the timings are validated by the settings loader (its Config calls `sys.exit`),
  the lock is given our ApiClient (it builds a default one), and the library cannot release a
  lease, so `release()` does: it clears the holder, which lets a follower take over on its next
  retry instead of waiting for the lease to expire.
- After `release()` starts, this replica never renews or acquires again (a guard around
  `try_acquire_or_renew`), so a renewal racing with the release cannot re-take the lease.
- `run()` of the library returns when leadership is lost (renewal failed past the deadline, or the
  work raised); `run_elected` then returns 1 so the process exits non-zero and is restarted as a
  follower, never reconciling without the lease.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from kubernetes.client import ApiClient, CoordinationV1Api
from kubernetes.client.exceptions import ApiException
from kubernetes.leaderelection import electionconfig
from kubernetes.leaderelection.leaderelection import LeaderElection
from kubernetes.leaderelection.resourcelock.leaselock import LeaseLock
from urllib3.exceptions import HTTPError

from extender.settings import LeaderSettings

log = logging.getLogger(__name__)

HANDOVER_TIMEOUT_S = 30.0
"""How long shutdown waits for the running work to finish (then releases the lease anyway)."""


class _Election(LeaderElection):
    """The library's elector, plus a release that no later renewal can undo."""

    def __init__(self, config: electionconfig.Config) -> None:
        super().__init__(config)  # type: ignore[no-untyped-call]
        self._guard = threading.Lock()
        self._released = False

    def try_acquire_or_renew(self) -> bool:
        with self._guard:
            if self._released:
                return False
            acquired: bool = super().try_acquire_or_renew()  # type: ignore[no-untyped-call]
            return acquired

    def release(self) -> None:
        """Give the lease up if this replica holds it; never acquire or renew afterwards."""
        with self._guard:
            self._released = True
            lock: LeaseLock = self.election_config.lock
            try:
                lease = lock.api_instance.read_namespaced_lease(lock.name, lock.namespace)
                if lease.spec is None or lease.spec.holder_identity != lock.identity:
                    return
                lease.spec.holder_identity = None
                lease.spec.lease_duration_seconds = 1
                lock.api_instance.replace_namespaced_lease(lock.name, lock.namespace, lease)
                log.info("released lease %s/%s", lock.namespace, lock.name)
            except (ApiException, HTTPError, OSError) as exc:
                # The lease then simply expires after lease_duration_s.
                log.warning("could not release lease %s: %s", lock.name, exc)


def run_elected(
    leader: LeaderSettings,
    namespace: str,
    api_client: ApiClient,
    identity: str,
    work: Callable[[threading.Event], None],
    stop: threading.Event,
) -> int:
    """Run `work(stop)` only while holding the lease; return the process exit code.

    Blocks until `stop` is set (returns 0 after `work` returned and the lease was released) or
    leadership is lost (sets `stop`, waits for `work` to return, returns 1: the caller must exit).
    `work` must return soon after `stop` is set. Timings must have been validated
    (settings.validate).
    """
    lost = threading.Event()
    working = threading.Event()
    finished = threading.Event()

    def started() -> None:
        working.set()
        try:
            work(stop)
        finally:
            finished.set()

    def stopped() -> None:
        log.error("leadership of %s lost", leader.lease_name)
        lost.set()
        stop.set()

    lock = LeaseLock(leader.lease_name, namespace, identity)
    lock.api_instance = CoordinationV1Api(api_client)
    config = electionconfig.Config(
        lock,
        lease_duration=leader.lease_duration_s,
        renew_deadline=leader.renew_deadline_s,
        retry_period=leader.retry_period_s,
        onstarted_leading=started,
        onstopped_leading=stopped,
    )
    election = _Election(config)
    threading.Thread(target=election.run, daemon=True, name=f"leader-{leader.lease_name}").start()
    stop.wait()
    if working.is_set() and not finished.wait(HANDOVER_TIMEOUT_S):
        log.warning("reconcile still running after %.0fs", HANDOVER_TIMEOUT_S)
    if lost.is_set():
        return 1
    election.release()
    return 0


def api_client_for(kubeconfig: str | None, *, retries: int | None = None) -> ApiClient:
    """An ApiClient from `kubeconfig`, or from the in-cluster service account when None.

    `retries`: urllib3's attempts after a failed connection (None: its default, 3). Callers
    that must fail fast (a request waits on them) pass 0."""
    from kubernetes import config
    from kubernetes.client import ApiClient, Configuration

    from extender.errors import ConfigError

    try:
        configuration = Configuration()
        if kubeconfig:
            config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
        else:
            config.load_incluster_config(client_configuration=configuration)
        configuration.retries = retries
        return ApiClient(configuration)
    except (config.ConfigException, OSError) as exc:
        where = kubeconfig or "in-cluster service account"
        raise ConfigError(f"{where}: cannot configure the Kubernetes client: {exc}") from exc
