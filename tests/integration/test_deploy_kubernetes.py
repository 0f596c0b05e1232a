"""deploy/kubernetes: every build renders, validates strictly, and keeps the design's promises.

Rendering is the real ``kubectl kustomize`` (kustomize 5 inside kubectl). Schemas come
from ``kubernetes-validate`` (shipped with the package, no network), strict mode: an
unknown or misspelt field fails. The ServiceMonitor, a Prometheus Operator resource
Kubernetes has no schema for, is checked by its own design test.

The command lines are checked against the CLI itself: every flag of a container is one
``spegel <command> --help`` lists, every ``SPEGEL_*`` variable one it names, and the init
and cleanup commands are run for real on a temporary certs.d.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy" / "kubernetes"
KUBECTL = shutil.which("kubectl")
# The oldest Kubernetes release still common in the field, and the one of the
# kubectl that renders here.
K8S_VERSIONS = ("1.29", "1.32")
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]

# Not a skip: CI installs kubectl when the machine lacks it (.ci/run).
assert KUBECTL is not None, "kubectl is required for `kubectl kustomize` (see .ci/run)"

Doc = dict[str, Any]


# -- what there is to render ----------------------------------------------------------------------
def _kind(directory: Path) -> str:
    return str(yaml.safe_load((directory / "kustomization.yaml").read_text()).get("kind", ""))


KUSTOMIZATIONS = sorted(p.parent.relative_to(DEPLOY).as_posix() or "."
                        for p in DEPLOY.rglob("kustomization.yaml")
                        if _kind(p.parent) == "Kustomization")
COMPONENTS = sorted(p.parent.relative_to(DEPLOY).as_posix()
                    for p in DEPLOY.rglob("kustomization.yaml") if _kind(p.parent) == "Component")
# Builds: every kustomization, and every component on top of the base and the cleanup
# (through a kustomization written into a temporary directory).
BUILDS = KUSTOMIZATIONS + [f"base+{c}" for c in COMPONENTS]


def _render_dir(directory: Path) -> list[Doc]:
    assert KUBECTL is not None
    result = subprocess.run([KUBECTL, "kustomize", str(directory)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, f"kubectl kustomize {directory}:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@functools.cache
def render(build: str) -> tuple[Doc, ...]:
    if not build.startswith("base+"):
        return tuple(_render_dir(DEPLOY / build))
    component = build.removeprefix("base+")
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        up = Path(os.path.relpath(DEPLOY, tmp))
        (Path(tmp) / "kustomization.yaml").write_text(yaml.safe_dump({
            "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
            "resources": [str(up / "base"), str(up / "cleanup" / "base")],
            "components": [str(up / component)]}))
        return tuple(_render_dir(Path(tmp)))


def of_kind(docs: tuple[Doc, ...], kind: str) -> list[Doc]:
    return [doc for doc in docs if doc["kind"] == kind]


def one(docs: tuple[Doc, ...], kind: str, name: str) -> Doc:
    found = [doc for doc in of_kind(docs, kind) if doc["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def pod_specs(docs: tuple[Doc, ...]) -> Iterator[tuple[str, Doc]]:
    for doc in docs:
        if doc["kind"] in ("DaemonSet", "Deployment", "StatefulSet", "Job", "Pod"):
            spec = doc["spec"] if doc["kind"] == "Pod" else doc["spec"]["template"]["spec"]
            yield doc["metadata"]["name"], spec


def container(spec: Doc, name: str, *, init: bool = False) -> Doc:
    items = spec.get("initContainers" if init else "containers", [])
    found = [c for c in items if c["name"] == name]
    assert len(found) == 1, f"no {'init ' if init else ''}container {name!r}"
    return found[0]


def flag_values(args: list[str]) -> dict[str, str]:
    """``--flag=value`` and ``--flag value`` items of a command line."""
    values: dict[str, str] = {}
    for index, arg in enumerate(args):
        if not arg.startswith("--"):
            continue
        name, sep, value = arg.partition("=")
        if not sep and index + 1 < len(args) and not args[index + 1].startswith("--"):
            value = args[index + 1]
        values[name] = value
    return values


# What the downward API gives on a node of the test.
DOWNWARD = {"status.hostIP": "10.0.0.7", "metadata.namespace": "spegel"}


def container_env(item: Doc, docs: tuple[Doc, ...]) -> dict[str, str]:
    """A container's environment as the kubelet makes it: literals (with $(VAR) of the
    variables before them), the build's ConfigMap (an optional key that is absent
    leaves the variable unset) and the downward API (``DOWNWARD``)."""
    env: dict[str, str] = {}
    for var in item.get("env", []):
        if "value" in var:
            env[var["name"]] = expand(str(var["value"]), env)
            continue
        source = var["valueFrom"]
        if "fieldRef" in source:
            env[var["name"]] = DOWNWARD[source["fieldRef"]["fieldPath"]]
            continue
        ref = source["configMapKeyRef"]
        data = one(docs, "ConfigMap", ref["name"])["data"]
        if ref["key"] in data:
            env[var["name"]] = str(data[ref["key"]])
        else:
            assert ref.get("optional") is True, f"{var['name']}: no key {ref['key']}"
    return env


def expand(text: str, values: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion in command and args."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: values[m[1]], text)


# -- the CLI's own view of its flags --------------------------------------------------------------
def _spegel() -> list[str]:
    script = Path(sys.executable).with_name("spegel")
    return [str(script)] if script.exists() else [sys.executable, "-m", "spegel_core.cli.main"]


@functools.cache
def cli_help(command: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPEGEL_")}
    result = subprocess.run([*_spegel(), command, "--help"], capture_output=True, text=True,
                            env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def help_flags(command: str) -> set[str]:
    """The flags in the usage block of ``spegel COMMAND --help``."""
    usage = cli_help(command).split("\n\n", 1)[0]
    return set(re.findall(r"(--[a-z0-9][a-z0-9-]*)", usage))


def help_env_names(command: str) -> set[str]:
    return set(re.findall(r"\benv\s+(SPEGEL_[A-Z0-9_]+)", cli_help(command)))


# -- 1. renders, validates ------------------------------------------------------------------------
def test_the_builds_are_found() -> None:
    assert {".", "base", "overlays/k3s", "overlays/rke2", "overlays/plain-http-registry",
            "cleanup", "cleanup/k3s", "cleanup/rke2"} <= set(KUSTOMIZATIONS)
    assert {"components/servicemonitor", "components/k3s", "components/rke2"} <= set(COMPONENTS)


@functools.cache
def schema_error(document: str, version: str) -> str | None:
    """Strict validation of one object (as JSON: builds share most objects)."""
    doc = json.loads(document)
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = ".".join(str(p) for p in exc.path)
        return f"{doc['kind']}/{doc['metadata']['name']} against {version}: {path}: {exc.message}"
    except kubernetes_validate.SchemaNotFoundError as exc:
        return str(exc.message)
    return None


@pytest.mark.parametrize("build", BUILDS)
def test_build_renders_and_validates_strictly(build: str) -> None:
    docs = render(build)
    assert docs, f"{build} renders nothing"
    for doc in docs:
        if doc["kind"] == "ServiceMonitor":
            continue  # a CRD: test_servicemonitor_component
        for version in K8S_VERSIONS:
            error = schema_error(json.dumps(doc, sort_keys=True), version)
            assert error is None, f"{build}: {error}"


def test_root_renders_the_base() -> None:
    assert render(".") == render("base")


@pytest.mark.parametrize("build", BUILDS)
def test_everything_is_namespaced_in_spegel(build: str) -> None:
    for doc in render(build):
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == "spegel", doc["metadata"]["name"]


# -- 2. nothing talks to the API server -----------------------------------------------------------
ALLOWED_KINDS = {"Namespace", "ConfigMap", "Service", "DaemonSet", "ServiceMonitor",
                 "NetworkPolicy"}


@pytest.mark.parametrize("build", BUILDS)
def test_no_rbac_no_lease_no_token(build: str) -> None:
    docs = render(build)
    kinds = {doc["kind"] for doc in docs}
    assert kinds <= ALLOWED_KINDS, f"unexpected kinds {kinds - ALLOWED_KINDS}"
    text = yaml.safe_dump_all(docs)
    for word in ("rbac.authorization.k8s.io", "coordination.k8s.io", "leader"):
        assert word not in text, f"{build} mentions {word!r}"
    for name, spec in pod_specs(docs):
        assert spec.get("automountServiceAccountToken") is False, name
        assert "serviceAccountName" not in spec and "serviceAccount" not in spec, name
        for item in spec.get("volumes", []):
            assert "projected" not in item, f"{name}: projected volume {item['name']}"


# -- 3. the DaemonSet -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def docs() -> tuple[Doc, ...]:
    return render("base")


@pytest.fixture(scope="module")
def pod(docs: tuple[Doc, ...]) -> Doc:
    spec: Doc = one(docs, "DaemonSet", "spegel")["spec"]["template"]["spec"]
    return spec


@pytest.fixture(scope="module")
def registry(pod: Doc) -> Doc:
    return container(pod, "registry")


@pytest.fixture(scope="module")
def init(pod: Doc) -> Doc:
    return container(pod, "configuration", init=True)


def test_runs_on_every_node_and_first(pod: Doc) -> None:
    assert pod["priorityClassName"] == "system-node-critical"
    assert {"operator": "Exists"} in pod["tolerations"]
    # Linux nodes only: tolerating every taint must not reach Windows nodes.
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"} and not pod.get("affinity")
    assert not pod.get("hostNetwork")
    assert pod["enableServiceLinks"] is False  # no SPEGEL_* variables from Service names


def test_probes(registry: Doc) -> None:
    port = next(p for p in registry["ports"] if p["name"] == "registry")
    addr = flag_values(registry["args"])["--registry-addr"]
    assert addr.endswith(f":{port['containerPort']}")
    probes = {kind: registry[f"{kind}Probe"]["httpGet"] for kind in ("startup", "liveness",
                                                                    "readiness")}
    assert probes["readiness"]["path"] == "/readyz"
    assert probes["liveness"]["path"] == "/livez"
    # The startup probe must not wait for peers nor for the store: /livez answers
    # as soon as the process serves HTTP.
    assert probes["startup"]["path"] == "/livez"
    for probe in probes.values():
        assert probe["port"] in ("registry", port["containerPort"])
    startup = registry["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 30


def test_registry_port_is_a_host_port_and_the_mirror_target(registry: Doc, init: Doc) -> None:
    ports = {p["name"]: p for p in registry["ports"]}
    assert ports["registry"]["hostPort"] == ports["registry"]["containerPort"] == 5000
    assert ports["router"]["protocol"] == "UDP" and "hostPort" not in ports["router"]
    assert "hostPort" not in ports["metrics"]
    target = flag_values(init["args"])["--mirror-targets"]
    assert target == f"http://$(NODE_IP):{ports['registry']['hostPort']}"
    node_ip = next(e for e in init["env"] if e["name"] == "NODE_IP")
    assert node_ip["valueFrom"]["fieldRef"]["fieldPath"] == "status.hostIP"
    router = flag_values(registry["args"])["--router-addr"]
    assert router.endswith(f":{ports['router']['containerPort']}")
    metrics = flag_values(registry["args"])["--metrics-addr"]
    assert metrics.endswith(f":{ports['metrics']['containerPort']}")


def _mounts(item: Doc) -> dict[str, Doc]:
    return {m["name"]: m for m in item.get("volumeMounts", [])}


def test_containerd_mounts(pod: Doc, registry: Doc, init: Doc) -> None:
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = _mounts(registry)
    args = flag_values(registry["args"])
    # Every host path the registry container sees, it sees read-only, but its own
    # data directory (the node id, kept across pod re-creation).
    for name, mount in mounts.items():
        if "hostPath" in volumes[name] and name != "data":
            assert mount.get("readOnly") is True, f"{name} is not mounted read-only"
    assert volumes["data"]["hostPath"] == {"path": "/var/lib/spegel",
                                           "type": "DirectoryOrCreate"}
    assert mounts["data"]["mountPath"] == args["--data-dir"]
    assert "containerd-certs" not in mounts  # only the init container writes certs.d
    sock = Path(args["--containerd-sock"])
    assert mounts["containerd-run"]["mountPath"] == str(sock.parent)
    assert mounts["containerd-run"]["mountPropagation"] == "HostToContainer"
    assert volumes["containerd-run"]["hostPath"] == {"path": "/run/containerd",
                                                     "type": "Directory"}
    assert mounts["containerd-content"]["mountPath"] == args["--containerd-content-path"]
    assert volumes["containerd-content"]["hostPath"]["path"] == args["--containerd-content-path"]
    config_path = flag_values(init["args"])["--containerd-registry-config-path"]
    certs = _mounts(init)["containerd-certs"]
    assert certs["mountPath"] == config_path and not certs.get("readOnly")
    assert volumes["containerd-certs"]["hostPath"]["path"] == "/etc/containerd/certs.d"


def test_security_context(pod: Doc, registry: Doc, init: Doc) -> None:
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["securityContext"]["supplementalGroups"] == [0]  # the socket is root:root 0660
    for item in (registry, init):
        context = item["securityContext"]
        assert context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert context["privileged"] is False
        assert context["capabilities"] == {"drop": ["ALL"]}
    assert registry["securityContext"]["runAsNonRoot"] is True
    assert registry["securityContext"]["runAsUser"] != 0
    assert init["securityContext"]["runAsUser"] == 0  # certs.d is root's


def _benchmark_figure(label: str) -> float:
    text = (ROOT / "docs" / "benchmarks.md").read_text()
    match = re.search(rf"^\| {re.escape(label)} \| ([0-9.]+) \|", text, re.M)
    assert match, f"docs/benchmarks.md has no row {label!r}"
    return float(match[1])


def _mebibytes(quantity: str) -> float:
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024}
    number, unit = re.fullmatch(r"(\d+)(Ki|Mi|Gi)", quantity).groups()  # type: ignore[union-attr]
    return int(number) * units[unit]


def test_resources_follow_the_benchmark(registry: Doc, init: Doc) -> None:
    idle = _benchmark_figure("RSS idle (MB)") * 1e6 / 2**20
    peak = _benchmark_figure("RSS peak under concurrent load (MB)") * 1e6 / 2**20
    resources = registry["resources"]
    assert _mebibytes(resources["requests"]["memory"]) >= 1.5 * idle
    assert _mebibytes(resources["limits"]["memory"]) >= 3 * peak
    assert resources["requests"]["cpu"] and resources["limits"]["cpu"]
    assert init["resources"]["limits"]["memory"]


def test_image_is_the_project_version(docs: tuple[Doc, ...]) -> None:
    for build in ("base", "cleanup"):
        for name, spec in pod_specs(render(build)):
            for item in spec.get("initContainers", []) + spec["containers"]:
                assert item["image"] == f"spegel:{VERSION}", f"{build} {name}/{item['name']}"
                assert item["imagePullPolicy"] == "IfNotPresent"


def test_cluster_key_is_an_optional_secret(pod: Doc, registry: Doc) -> None:
    volume = next(v for v in pod["volumes"] if v["name"] == "cluster-key")
    assert volume["secret"] == {"secretName": "spegel-cluster-key", "optional": True}
    mount = _mounts(registry)["cluster-key"]
    assert mount["readOnly"] is True
    # The key is the default path: the base names the mounted file, and runs open
    # (with the warning) while the Secret does not exist; the component requires it.
    # The variables are real settings (test_node_flags_are_the_cli_flags).
    base = render("base")
    env = container_env(registry, base)
    assert Path(env["SPEGEL_CLUSTER_KEY_FILE"]).parent == Path(mount["mountPath"])
    assert env["SPEGEL_CLUSTER_KEY_OPTIONAL"] == "true"
    docs = render("base+components/cluster-key")
    keyed = container(one(docs, "DaemonSet", "spegel")["spec"]["template"]["spec"], "registry")
    required = container_env(keyed, docs)
    assert Path(required["SPEGEL_CLUSTER_KEY_FILE"]).parent == Path(mount["mountPath"])
    assert required["SPEGEL_CLUSTER_KEY_OPTIONAL"] == "false"
    assert {"--cluster-key-file", "--cluster-key-optional"} <= help_flags("registry")


# -- 4. the command lines are the CLI's -----------------------------------------------------------
def _check_command(item: Doc, command: str) -> None:
    args = item["args"]
    assert args[0] == command and "command" not in item  # the image's ENTRYPOINT is spegel
    unknown = set(flag_values(args)) - help_flags(command)
    assert not unknown, f"{item['name']}: `spegel {command}` has no {sorted(unknown)}"
    names = {e["name"] for e in item.get("env", [])}
    spegel_env = {n for n in names if n.startswith("SPEGEL_")}
    unknown_env = spegel_env - help_env_names(command)
    assert not unknown_env, f"{item['name']}: no setting reads {sorted(unknown_env)}"
    for ref in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", " ".join(args)):
        assert ref in names, f"{item['name']}: $({ref}) is not in its env"


@pytest.mark.parametrize("build", [b for b in BUILDS if b.split("/")[0] in
                                   ("base", ".", "overlays") or b.startswith("base+")])
def test_node_flags_are_the_cli_flags(build: str) -> None:
    spec = one(render(build), "DaemonSet", "spegel")["spec"]["template"]["spec"]
    _check_command(container(spec, "configuration", init=True), "configuration")
    _check_command(container(spec, "registry"), "registry")


@pytest.mark.parametrize("build", ["cleanup", "cleanup/k3s", "cleanup/rke2"])
def test_cleanup_flags_are_the_cli_flags(build: str) -> None:
    spec = one(render(build), "DaemonSet", "spegel-cleanup")["spec"]["template"]["spec"]
    _check_command(container(spec, "cleanup", init=True), "cleanup")
    assert spec["containers"][0]["command"] == ["sleep", "infinity"]


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPEGEL_")}
    return subprocess.run([*_spegel(), *args], capture_output=True, text=True, env=env,
                          timeout=60)


@pytest.mark.parametrize("build", ["base", "overlays/plain-http-registry"])
def test_init_and_cleanup_commands_run(build: str, tmp_path: Path) -> None:
    """The init container's command line, as the kubelet expands it, on a real directory;
    then the cleanup DaemonSet's command puts the directory back."""
    docs = render(build)
    spec = one(docs, "DaemonSet", "spegel")["spec"]["template"]["spec"]
    init = container(spec, "configuration", init=True)
    values = container_env(init, docs)
    certs = tmp_path / "certs.d"
    (certs / "docker.io").mkdir(parents=True)
    previous = 'server = "https://registry-1.docker.io"\n'
    (certs / "docker.io" / "hosts.toml").write_text(previous)
    config_path = flag_values(init["args"])["--containerd-registry-config-path"]
    args = [expand(a, values).replace(config_path, str(certs)) for a in init["args"]]
    result = _run(args)
    assert result.returncode == 0, result.stderr
    hosts = tomllib.loads((certs / "docker.io" / "hosts.toml").read_text())
    assert hosts["server"] == "https://registry-1.docker.io"
    assert hosts["host"]["http://10.0.0.7:5000"]["capabilities"] == ["pull", "resolve"]
    mirrored = values["MIRRORED_REGISTRIES"].split(",")
    assert len([p for p in certs.iterdir() if p.name != "_backup"]) == len(mirrored)
    if build == "overlays/plain-http-registry":
        plain = tomllib.loads((certs / "registry.test:5000" / "hosts.toml").read_text())
        assert plain["server"] == "http://registry.test:5000"

    cleanup_spec = one(render("cleanup"), "DaemonSet", "spegel-cleanup")["spec"]["template"]
    cleanup = container(cleanup_spec["spec"], "cleanup", init=True)
    result = _run([a.replace(config_path, str(certs)) for a in cleanup["args"]])
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in certs.iterdir()) == ["docker.io"]
    assert (certs / "docker.io" / "hosts.toml").read_text() == previous


@pytest.mark.parametrize("build", ["base", "overlays/plain-http-registry",
                                   "base+components/cluster-key"])
def test_registry_command_line_is_a_valid_config(build: str, monkeypatch: pytest.MonkeyPatch,
                                                 tmp_path: Path) -> None:
    """The registry container's arguments and SPEGEL_* variables, as the kubelet
    expands them, pass the parsing and validation ``spegel registry`` does at start."""
    from spegel_core.cli.main import build_parser
    from spegel_core.cli.options import settings_values
    from spegel_core.config import load_config
    from spegel_core.plugin_manager import create_plugin_manager

    docs = render(build)
    spec = one(docs, "DaemonSet", "spegel")["spec"]["template"]["spec"]
    registry = container(spec, "registry")
    env = container_env(registry, docs)
    for name in [n for n in os.environ if n.startswith("SPEGEL_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        if name.startswith("SPEGEL_"):
            monkeypatch.setenv(name, value)
    args = [expand(a, env) for a in registry["args"]]
    parser, settings = build_parser(create_plugin_manager())
    namespace = parser.parse_args(args)
    config = load_config(settings, settings_values(namespace, settings))  # type: ignore[arg-type]
    assert str(config.core.registry_addr) == ":5000"
    assert config.core.content_store == "containerd"
    assert "--dns-bootstrap-domain=spegel-bootstrap.spegel.svc.cluster.local" in args


# -- 5. Services ----------------------------------------------------------------------------------
def _selects(service: Doc, labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in service["spec"]["selector"].items())


def test_headless_bootstrap_service(docs: tuple[Doc, ...], registry: Doc) -> None:
    daemonset = one(docs, "DaemonSet", "spegel")
    service = one(docs, "Service", "spegel-bootstrap")
    spec = service["spec"]
    assert spec["clusterIP"] == "None"
    assert spec["publishNotReadyAddresses"] is True
    assert _selects(service, daemonset["spec"]["template"]["metadata"]["labels"])
    (port,) = spec["ports"]
    assert port["protocol"] == "UDP" and port["port"] == 5001 and port["name"] == "router"
    assert port["targetPort"] in ("router", 5001)
    domain = flag_values(registry["args"])["--dns-bootstrap-domain"]
    assert domain.startswith(f"{service['metadata']['name']}.$(POD_NAMESPACE).svc.")
    namespace = next(e for e in registry["env"] if e["name"] == "POD_NAMESPACE")
    assert namespace["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"


def test_metrics_service(docs: tuple[Doc, ...], registry: Doc) -> None:
    daemonset = one(docs, "DaemonSet", "spegel")
    service = one(docs, "Service", "spegel-metrics")
    assert service["spec"].get("clusterIP") != "None"
    assert _selects(service, daemonset["spec"]["template"]["metadata"]["labels"])
    (port,) = service["spec"]["ports"]
    assert port["port"] == 9090 and port["name"] == "metrics" and port["protocol"] == "TCP"
    assert port["targetPort"] in {p["name"] for p in registry["ports"]}


def test_servicemonitor_component() -> None:
    docs = render("base+components/servicemonitor")
    monitor = one(docs, "ServiceMonitor", "spegel")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["namespace"] == "spegel"
    assert set(monitor["spec"]) == {"selector", "endpoints"}
    selected = [s for s in of_kind(docs, "Service")
                if all(s["metadata"]["labels"].get(k) == v
                       for k, v in monitor["spec"]["selector"]["matchLabels"].items())]
    assert [s["metadata"]["name"] for s in selected] == ["spegel-metrics"]
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in selected[0]["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout", "relabelings"}
    assert "ServiceMonitor" not in {d["kind"] for d in render("base")}


# -- 6. overlays ----------------------------------------------------------------------------------
K3S = {"k3s": "/var/lib/rancher/k3s", "rke2": "/var/lib/rancher/rke2"}


@pytest.mark.parametrize("distro", sorted(K3S))
def test_k3s_and_rke2_paths(distro: str) -> None:
    root = K3S[distro]
    expected = {
        "containerd-run": "/run/k3s/containerd",
        "containerd-content": f"{root}/agent/containerd/io.containerd.content.v1.content",
        "containerd-certs": f"{root}/agent/etc/containerd/certs.d",
        "data": "/var/lib/spegel",
    }
    spec = one(render(f"overlays/{distro}"), "DaemonSet", "spegel")["spec"]["template"]["spec"]
    volumes = {v["name"]: v["hostPath"]["path"] for v in spec["volumes"] if "hostPath" in v}
    assert volumes == expected
    # The containers see the usual paths: only the host side moved.
    base = one(render("base"), "DaemonSet", "spegel")["spec"]["template"]["spec"]
    assert spec["containers"] == base["containers"]
    assert spec["initContainers"] == base["initContainers"]
    cleanup = one(render(f"cleanup/{distro}"), "DaemonSet", "spegel-cleanup")
    (volume,) = cleanup["spec"]["template"]["spec"]["volumes"]
    assert volume["hostPath"]["path"] == expected["containerd-certs"]


def test_plain_http_registry_overlay() -> None:
    docs = render("overlays/plain-http-registry")
    (config,) = of_kind(docs, "ConfigMap")
    registries = config["data"]["MIRRORED_REGISTRIES"].split(",")
    assert any(r.startswith("http://") for r in registries)
    (base_config,) = of_kind(render("base"), "ConfigMap")
    assert set(base_config["data"]["MIRRORED_REGISTRIES"].split(",")) < set(registries)
    assert config["metadata"]["name"] != base_config["metadata"]["name"]  # rolls the pods


def test_install_guide_names_every_build() -> None:
    text = (ROOT / "docs" / "install.md").read_text()
    for build in KUSTOMIZATIONS + COMPONENTS:
        if build not in (".", "base", "cleanup/base"):
            assert build in text, f"docs/install.md does not mention {build}"
