"""deploy/kubernetes for the Go original's users: Linux nodes only, the node id on the host,
basic auth, a NetworkPolicy and the dashboard for Grafana's sidecar (``kubectl kustomize``)."""

from __future__ import annotations

import json
import stat
import tomllib
from pathlib import Path

from tests.integration.test_deploy_kubernetes import (
    DEPLOY,
    ROOT,
    _run,
    container,
    container_env,
    expand,
    flag_values,
    of_kind,
    one,
    render,
)


def _spec(build: str, name: str = "spegel") -> dict[str, object]:
    spec: dict[str, object] = one(render(build), "DaemonSet", name)["spec"]["template"]["spec"]
    return spec


def test_every_daemonset_runs_on_linux_nodes_only() -> None:
    for build, name in (("base", "spegel"), ("cleanup", "spegel-cleanup"),
                        ("overlays/k3s", "spegel")):
        assert _spec(build, name)["nodeSelector"] == {"kubernetes.io/os": "linux"}


def test_the_node_id_lives_on_the_host() -> None:
    spec = _spec("base")
    registry = container(spec, "registry")
    data_dir = flag_values(registry["args"])["--data-dir"]
    assert data_dir.startswith("/var/lib/spegel")
    volumes = {v["name"]: v for v in spec["volumes"]}  # type: ignore[attr-defined]
    assert volumes["data"]["hostPath"] == {"path": "/var/lib/spegel", "type": "DirectoryOrCreate"}
    # The init container makes it writable for the root group the registry container has,
    # without any capability, before the registry starts.
    prepare = container(spec, "data-dir", init=True)
    assert prepare["volumeMounts"] == [{"name": "data", "mountPath": data_dir}]
    assert "0o770" in prepare["command"][-1] and data_dir in prepare["command"][-1]
    assert prepare["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert prepare["securityContext"]["allowPrivilegeEscalation"] is False
    assert 0 in spec["securityContext"]["supplementalGroups"]  # type: ignore[index]
    assert registry["securityContext"]["runAsUser"] != 0


def test_basic_auth_component(tmp_path: Path) -> None:
    docs = render("base+components/basic-auth")
    spec = one(docs, "DaemonSet", "spegel")["spec"]["template"]["spec"]
    init, registry = container(spec, "configuration", init=True), container(spec, "registry")
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["basic-auth"]["secret"] == {"secretName": "spegel-basic-auth",
                                               "optional": True}
    for item in (init, registry):
        env = container_env(item, docs)
        mount = next(m for m in item["volumeMounts"] if m["name"] == "basic-auth")
        assert env["SPEGEL_BASIC_AUTH_DIR"] == mount["mountPath"] == "/etc/secrets/basic-auth"
        assert mount["readOnly"] is True
    # Without the component the variable is absent: no auth, and nothing fails.
    base = render("base")
    base_spec = one(base, "DaemonSet", "spegel")["spec"]["template"]["spec"]
    assert "SPEGEL_BASIC_AUTH_DIR" not in container_env(container(base_spec, "registry"), base)

    # The init command line, as the kubelet expands it, writes the header (root only).
    secret = tmp_path / "basic-auth"
    secret.mkdir()
    (secret / "username").write_text("spegel")
    (secret / "password").write_text("s3cret")
    values = container_env(init, docs)
    certs = tmp_path / "certs.d"
    config_path = flag_values(init["args"])["--containerd-registry-config-path"]
    args = [expand(a, values).replace(config_path, str(certs)) for a in init["args"]]
    result = _run([*args, f"--basic-auth-dir={secret}"])
    assert result.returncode == 0, result.stderr
    path = certs / "docker.io" / "hosts.toml"
    header = tomllib.loads(path.read_text())["host"]["http://10.0.0.7:5000"]["header"]
    assert header["Authorization"].startswith("Basic ")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_networkpolicy_component() -> None:
    docs = render("base+components/networkpolicy")
    (policy,) = of_kind(docs, "NetworkPolicy")
    pod_labels = one(docs, "DaemonSet", "spegel")["spec"]["template"]["metadata"]["labels"]
    selector = policy["spec"]["podSelector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    allowed = {(port["protocol"], port["port"]): rule["from"]
               for rule in policy["spec"]["ingress"] for port in rule["ports"]}
    assert set(allowed) == {("UDP", 5001), ("TCP", 5000), ("TCP", 9090)}
    # DHT and peer hop only from other spegel pods.
    for key in (("UDP", 5001), ("TCP", 5000)):
        assert allowed[key] == [{"podSelector": {"matchLabels": selector}}]
    # The ports are the DaemonSet's own.
    registry = container(one(docs, "DaemonSet", "spegel")["spec"]["template"]["spec"],
                         "registry")
    ports = {(p["protocol"], p["containerPort"]) for p in registry["ports"]}
    assert set(allowed) == ports


def test_grafana_dashboard_component() -> None:
    docs = render("base+components/grafana-dashboard")
    config = one(docs, "ConfigMap", "spegel-grafana-dashboard")
    assert config["metadata"]["labels"]["grafana_dashboard"] == "1"
    source = (ROOT / "deploy" / "grafana" / "spegel.json").read_text()
    copy = (DEPLOY / "components" / "grafana-dashboard" / "spegel.json").read_text()
    assert copy == source, "components/grafana-dashboard/spegel.json is not the dashboard"
    assert json.loads(config["data"]["spegel.json"]) == json.loads(source)
