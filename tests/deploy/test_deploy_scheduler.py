"""The second kube-scheduler: its configuration, how it reaches the extender, and its RBAC."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import msgspec
import pytest
import yaml

from extender.settings import load_settings
from tests.deploy.conftest import MANIFESTS, find, render, write_config
from tests.deploy.schemas import (
    KubeSchedulerConfiguration,
    SchemaError,
    go_duration_s,
    load_scheduler_config,
)

SCHEDULER_SA = {"kind": "ServiceAccount", "name": "metrics-aware-scheduler", "namespace": "extract"}


def scheduler_config(objects: tuple[dict[str, Any], ...]) -> KubeSchedulerConfiguration:
    """The KubeSchedulerConfiguration the scheduler pod reads, from its mounted ConfigMap."""
    spec = find(objects, "Deployment", "metrics-aware-scheduler")["spec"]["template"]["spec"]
    flag = next(a for a in spec["containers"][0]["command"] if a.startswith("--config="))
    path = flag.partition("=")[2]
    mount = next(m for m in spec["containers"][0]["volumeMounts"]
                 if path.startswith(m["mountPath"] + "/"))
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    config_map = next(o for o in objects if o["kind"] == "ConfigMap"
                      and o["metadata"]["name"] == volume["configMap"]["name"])
    key = path[len(mount["mountPath"]) + 1:]
    return load_scheduler_config(yaml.safe_load(config_map["data"][key]),
                                 f"ConfigMap/{config_map['metadata']['name']}:{key}")


def test_profile_calls_the_extender_as_recommended(overlay: tuple[dict[str, Any], ...]) -> None:
    config = scheduler_config(overlay)
    assert [p.scheduler_name for p in config.profiles] == ["metrics-aware"]
    (extender,) = config.extenders
    assert (extender.filter_verb, extender.prioritize_verb) == ("filter", "prioritize")
    assert extender.node_cache_capable and extender.ignorable
    assert extender.bind_verb is None, "ignorable does not cover bind"
    assert extender.weight is not None and extender.weight >= 1
    # The default (5 s) would let a hung extender stall the serial scheduling cycle.
    assert extender.http_timeout is not None and 0 < go_duration_s(extender.http_timeout) <= 1


def test_url_prefix_reaches_the_extender_service(overlay: tuple[dict[str, Any], ...],
                                                tmp_path: Path) -> None:
    (extender,) = scheduler_config(overlay).extenders
    url = urlsplit(extender.url_prefix)
    service_name, namespace, svc = (url.hostname or "").split(".")
    assert svc == "svc"
    service = find(overlay, "Service", service_name)
    assert service["metadata"]["namespace"] == namespace
    port = next(p for p in service["spec"]["ports"] if p["port"] == url.port)
    deployment = find(overlay, "Deployment", "extender")
    assert service["spec"]["selector"].items() <= \
        deployment["spec"]["template"]["metadata"]["labels"].items()
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    target = next(p for p in container["ports"] if p["name"] == port["targetPort"])
    assert container["args"][container["args"].index("--bind") + 1] == \
        f"0.0.0.0:{target['containerPort']}"
    # kube-scheduler POSTs <urlPrefix>/<verb>: the path part is the extender's server.url_prefix.
    settings = load_settings(write_config(overlay, tmp_path) / "extender.yaml", environ={})
    assert url.path.rstrip("/") == settings.server.url_prefix.rstrip("/")


def test_leader_election_uses_its_own_lease_it_may_update(
        overlay: tuple[dict[str, Any], ...]) -> None:
    le = scheduler_config(overlay).leader_election
    assert le is not None and le.leader_elect
    assert le.resource_name and le.resource_name != "kube-scheduler"
    role = next(o for o in overlay if o["kind"] == "Role"
                and o["metadata"]["namespace"] == le.resource_namespace
                and any(le.resource_name in r.get("resourceNames", []) for r in o["rules"]))
    granted = {v for r in role["rules"] if r["resources"] == ["leases"]
               and le.resource_name in r.get("resourceNames", [le.resource_name])
               for v in r["verbs"]}
    assert {"get", "update"} <= granted
    binding = next(o for o in overlay if o["kind"] == "RoleBinding"
                   and o["roleRef"]["name"] == role["metadata"]["name"])
    assert SCHEDULER_SA in binding["subjects"]


def test_scheduler_holds_the_roles_of_a_kube_scheduler(overlay: tuple[dict[str, Any], ...]) -> None:
    held = {(o["kind"], o["metadata"].get("namespace"), o["roleRef"]["name"])
            for o in overlay if o["kind"] in ("ClusterRoleBinding", "RoleBinding")
            and SCHEDULER_SA in o["subjects"]}
    assert {("ClusterRoleBinding", None, "system:kube-scheduler"),
            ("ClusterRoleBinding", None, "system:volume-scheduler"),
            ("RoleBinding", "kube-system", "extension-apiserver-authentication-reader")} <= held
    spec = find(overlay, "Deployment", "metrics-aware-scheduler")["spec"]["template"]["spec"]
    assert spec["serviceAccountName"] == SCHEDULER_SA["name"]


def test_scheduler_is_probed_over_https_on_10259(overlay: tuple[dict[str, Any], ...]) -> None:
    container = find(overlay, "Deployment", "metrics-aware-scheduler")["spec"]["template"][
        "spec"]["containers"][0]
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        assert container[probe]["httpGet"] == {"path": path, "port": 10259, "scheme": "HTTPS"}


def test_tls_overlay_calls_the_extender_over_verified_https() -> None:
    objects = render("manifests/overlays/tls")
    (extender,) = scheduler_config(objects).extenders
    assert extender.url_prefix.startswith("https://") and extender.enable_https
    tls = extender.tls_config
    assert tls is not None and not tls.insecure and tls.ca_file
    assert tls.server_name == urlsplit(extender.url_prefix).hostname
    # The CA file is mounted from the Secret that holds the extender's certificate.
    spec = find(objects, "Deployment", "metrics-aware-scheduler")["spec"]["template"]["spec"]
    mount = next(m for m in spec["containers"][0]["volumeMounts"]
                 if tls.ca_file.startswith(m["mountPath"] + "/"))
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    secret = volume["secret"]["secretName"]
    key = tls.ca_file[len(mount["mountPath"]) + 1:]
    assert {"key": "ca.crt", "path": key} in volume["secret"]["items"]
    # ... and the extender serves that certificate, probed over HTTPS.
    ext = find(objects, "Deployment", "extender")["spec"]["template"]["spec"]
    container = ext["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    tls_volume = next(v for v in ext["volumes"] if v.get("secret", {}).get("secretName") == secret)
    tls_mount = next(m for m in container["volumeMounts"] if m["name"] == tls_volume["name"])
    for variable in ("EXTENDER_SERVER__TLS_CERT_FILE", "EXTENDER_SERVER__TLS_KEY_FILE"):
        assert env[variable].startswith(tls_mount["mountPath"] + "/")
    assert container["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
    assert container["livenessProbe"]["httpGet"]["scheme"] == "HTTPS"


def test_tls_overlay_makes_the_scheduler_present_a_client_certificate_the_extender_requires(
        ) -> None:
    objects = render("manifests/overlays/tls")
    (extender,) = scheduler_config(objects).extenders
    tls = extender.tls_config
    assert tls is not None and tls.cert_file and tls.key_file
    spec = find(objects, "Deployment", "metrics-aware-scheduler")["spec"]["template"]["spec"]

    def secret_item(pod: dict[str, Any], path: str) -> tuple[str, str]:
        """(Secret, key) mounted at `path` in the pod's first container."""
        mount = next(m for m in pod["containers"][0]["volumeMounts"]
                     if path.startswith(m["mountPath"] + "/"))
        volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
        item = next(i for i in volume["secret"]["items"]
                    if i["path"] == path[len(mount["mountPath"]) + 1:])
        return volume["secret"]["secretName"], item["key"]

    client_secret, _ = secret_item(spec, tls.cert_file)
    assert secret_item(spec, tls.cert_file) == (client_secret, "tls.crt")
    assert secret_item(spec, tls.key_file) == (client_secret, "tls.key")
    # The extender requires a client certificate signed by the CA of that Secret, and mounts
    # only its ca.crt (never the scheduler's key).
    ext = find(objects, "Deployment", "extender")["spec"]["template"]["spec"]
    env = {e["name"]: e["value"] for e in ext["containers"][0]["env"]}
    assert secret_item(ext, env["EXTENDER_SERVER__CLIENT_CA_FILE"]) == (client_secret, "ca.crt")
    volume = next(v for v in ext["volumes"]
                  if v.get("secret", {}).get("secretName") == client_secret)
    assert [i["key"] for i in volume["secret"]["items"]] == ["ca.crt"]
    monitor = find(objects, "ServiceMonitor", "extender")["spec"]["endpoints"][0]
    assert monitor["port"] == "monitoring" and monitor["scheme"] == "https"


def test_tls_scheduler_config_differs_from_the_base_only_in_tls_fields() -> None:
    def load(path: str) -> dict[str, Any]:
        return msgspec.to_builtins(load_scheduler_config(
            yaml.safe_load((MANIFESTS / path).read_text()), path))

    base = load("base/scheduler-config.yaml")
    tls = load("components/tls/scheduler-config.yaml")
    for extender in tls["extenders"]:
        extender.pop("enableHTTPS")
        extender.pop("tlsConfig")
        extender["urlPrefix"] = extender["urlPrefix"].replace("https://", "http://", 1)
    assert tls == base


@pytest.mark.parametrize(("change", "complaint"), [
    ({"filterverb": "filter"}, "unknown field `filterverb`"),
    ({"enableHTTPS": True}, "enableHTTPS=True but urlPrefix is http://"),
    ({"weight": 0}, "weight: must be positive"),
    ({"httpTimeout": "half a second"}, "not a Go duration"),
    ({"nodeCacheCapable": "yes"}, "Expected `bool`"),
])
def test_scheduler_config_check_catches_mistakes(change: dict[str, Any], complaint: str) -> None:
    data = yaml.safe_load((MANIFESTS / "base/scheduler-config.yaml").read_text())
    data["extenders"][0].update(change)
    with pytest.raises(SchemaError, match=complaint):
        load_scheduler_config(data, "mutated")


def test_gpu_overlay_leaves_resource_scoring_to_the_gpu_profile(tmp_path: Path) -> None:
    objects = render("manifests/overlays/gpu")
    (profile,) = scheduler_config(objects).profiles
    assert profile.plugins is not None and profile.plugins.score is not None
    assert {p.name for p in profile.plugins.score.disabled} == {
        "NodeResourcesFit", "NodeResourcesBalancedAllocation"}
    assert profile.plugins.filter is None, "filtering by requests must stay on"
    container = find(objects, "Deployment", "extender")["spec"]["template"]["spec"]["containers"][0]
    environ = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    settings = load_settings(write_config(objects, tmp_path) / "extender.yaml", environ=environ)
    assert settings.policy.default == "gpu"
    assert any(r.metric == "gpu_fragmentation" for r in settings.profile("gpu").filters)
