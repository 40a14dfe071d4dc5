"""Telling a running COMPSs master that workers joined or left (`compss.membership`).

Design decisions:
- A plain `runcompss` master reads `resources.xml` and `project.xml` once, at start. `roll`
  therefore restarts it when the files change: the content digest goes into an annotation of the
  master Deployment's pod template, and the Deployment controller rolls the pod (the same trick
  as a checksum annotation in a Helm chart). The running application is stopped: this suits a
  master that runs a service-like application or one that checkpoints.
- A master started as a COMPSs agent (`compss_agent_start --rest_port`) changes its pool live.
  `agents` makes the calls the COMPSs scripts make (`PUT /COMPSs/addResources`,
  `/COMPSs/removeResources`, `/COMPSs/lostNode`, XML bodies from `compss.membership_calls`),
  remembering per worker what the agent acknowledged, so a failed call is retried on the next
  pass and a success is never repeated. After a controller restart the last published
  `resources.xml` stands for what the agent was told.
- Both raise `MembershipError` on failure; the reconciler logs it and retries, never crashes.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Protocol

import requests
from kubernetes.client import AppsV1Api
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from extender.errors import ExtenderError
from extender.partition.compss import CompssFiles, CompssWorker, membership_calls
from extender.partition.settings import AgentSettings, PartitionSettings

log = logging.getLogger(__name__)

FILES_HASH_ANNOTATION = "extract.io/compss-files-hash"
"""On the master Deployment's pod template: the digest of the files it must read (`roll`)."""


class MembershipError(ExtenderError):
    """The master could not be told about the current workers (retried on the next pass)."""


class Membership(Protocol):
    def sync(self, files: CompssFiles) -> None:
        """Bring the master up to date with `files`; MembershipError when that failed."""
        ...


class RollMaster:
    """`roll`: the master Deployment's pod template carries the files' digest."""

    def __init__(self, apps_v1: AppsV1Api, deployment: str, namespace: str, timeout_s: float) -> None:
        self.apps = apps_v1
        self.deployment = deployment
        self.namespace = namespace
        self.timeout_s = timeout_s

    def sync(self, files: CompssFiles) -> None:
        # A strategic merge patch with an unchanged value changes nothing: no rollout.
        body = {"spec": {"template": {"metadata": {"annotations": {FILES_HASH_ANNOTATION: files.digest}}}}}
        try:
            self.apps.patch_namespaced_deployment(
                self.deployment, self.namespace, body, _request_timeout=self.timeout_s,
                _preload_content=False)
        except ApiException as exc:
            hint = " (does it exist? compss.master_deployment)" if exc.status == 404 else ""
            raise MembershipError(
                f"master Deployment {self.namespace}/{self.deployment} not patched: "
                f"{exc.status} {exc.reason}{hint}") from exc
        except (HTTPError, OSError) as exc:
            raise MembershipError(f"master Deployment {self.deployment} not patched: {exc}") from exc
        log.info("master %s/%s rolls to COMPSs files %s (%d workers)", self.namespace,
                 self.deployment, files.digest, len(files.workers))


class AgentMembership:
    """`agents`: REST calls to the master agent for each worker that joined, left or changed."""

    def __init__(self, settings: AgentSettings, announced: Mapping[str, CompssWorker],
                 session: requests.Session | None = None) -> None:
        self.settings = settings
        self.announced = dict(announced)
        """Worker name -> what the agent acknowledged."""
        self.session = session or requests.Session()

    def sync(self, files: CompssFiles) -> None:
        wanted = {w.name: w for w in files.workers}
        failures = []
        failed: set[str] = set()
        for call in membership_calls(self.announced, files.workers, self.settings):
            if call.worker in failed:
                # Never add a new share on top of an old one the agent did not take away.
                continue
            url = f"{self.settings.url.rstrip('/')}/COMPSs/{call.path}"
            try:
                resp = self.session.put(url, data=call.body.encode(),
                                        headers={"Content-Type": "application/xml"},
                                        timeout=self.settings.timeout_s)
            except requests.RequestException as exc:
                failures.append(f"{call.path} {call.worker}: {exc}")
                # The remaining calls would meet the same dead agent.
                break
            if resp.status_code != 200:
                failures.append(f"{call.path} {call.worker}: HTTP {resp.status_code} {resp.text[:200]}")
                failed.add(call.worker)
                continue
            log.info("COMPSs agent: %s %s", call.path, call.worker)
            if call.path == "lostNode":
                self.announced.pop(call.worker, None)
            elif call.path == "addResources":
                self.announced[call.worker] = wanted[call.worker]
            else:
                # The old share is gone; the add that follows records the new one.
                self.announced.pop(call.worker, None)
        if failures:
            raise MembershipError(f"COMPSs agent at {self.settings.url}: " + "; ".join(failures))


def membership_for(settings: PartitionSettings, apps_v1: AppsV1Api) -> Membership | None:
    """The `compss.membership` the settings name (None for `none` or when COMPSs is disabled)."""
    compss = settings.compss
    if not compss.enabled or compss.membership == "none":
        return None
    if compss.membership == "roll":
        return RollMaster(apps_v1, compss.master_deployment,
                          compss.master_namespace or settings.namespace, settings.api_timeout_s)
    return AgentMembership(compss.agents, {})
