"""The node image (Dockerfile, .dockerignore) and the systemd unit (deploy/systemd).

No Docker engine runs here, so the Dockerfile is read, not built: its instructions are
checked (two stages, the wheel built in the first and installed alone in the second, no
compiler, a non-root user, ``spegel`` as the entry point), and the wheel is built from
exactly the files the .dockerignore lets into the build context. The unit file goes
through ``systemd-analyze verify``, and its commands are run as systemd would expand them.
"""

from __future__ import annotations

import fnmatch
import functools
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "deploy" / "systemd" / "spegel.service"
ENV_FILE = ROOT / "deploy" / "systemd" / "spegel.env"


# -- the Dockerfile ---------------------------------------------------------------------------
@dataclass
class Instruction:
    keyword: str
    text: str


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction]

    def all(self, keyword: str) -> list[str]:
        return [i.text for i in self.instructions if i.keyword == keyword]


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARGs and the stages: comments dropped, continuation lines joined."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            words = rest.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(words[0], name, []))
        elif not stages and keyword == "ARG":
            key, _, value = rest.partition("=")
            args[key.strip()] = value.strip()
        else:
            assert stages, f"{keyword} before the first FROM"
            stages[-1].instructions.append(Instruction(keyword, rest.strip()))
    return args, stages


@pytest.fixture(scope="module")
def dockerfile() -> tuple[dict[str, str], list[Stage]]:
    return parse_dockerfile((ROOT / "Dockerfile").read_text())


def _base(stage: Stage, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}", lambda m: args[m[1]], stage.base)


def test_two_stages_on_slim_python(dockerfile: tuple[dict[str, str], list[Stage]]) -> None:
    args, stages = dockerfile
    assert len(stages) == 2
    builder, runtime = stages
    assert builder.name == "builder" and runtime.name is None
    for stage in stages:
        assert re.fullmatch(r"python:3\.1[1-9]-slim(-\w+)?", _base(stage, args)), stage.base
    assert _base(builder, args) == _base(runtime, args)  # same Python, same ABI


def test_builder_makes_the_wheels(dockerfile: tuple[dict[str, str], list[Stage]]) -> None:
    builder = dockerfile[1][0]
    runs = " ".join(builder.all("RUN"))
    assert re.search(r"pip wheel .*--wheel-dir /wheels \.", runs)
    copied = " ".join(builder.all("COPY"))
    for source in ("pyproject.toml", "README.md", "spegel_core", "plugins"):
        assert source in copied


def test_runtime_installs_only_the_wheels(dockerfile: tuple[dict[str, str], list[Stage]]) -> None:
    runtime = dockerfile[1][1]
    runs = runtime.all("RUN")
    install = [r for r in runs if "pip install" in r]
    assert len(install) == 1
    assert "from=builder" in install[0]  # the wheels come from the first stage
    assert "--no-index" in install[0] and "--find-links=/wheels" in install[0]
    assert "/wheels/spegel-*.whl" in install[0]
    # Nothing but the wheels: no source, no compiler, no package manager run.
    assert not runtime.all("COPY") and not runtime.all("ADD")
    text = " ".join(runs)
    for word in ("apt-get", "apt ", "gcc", "g++", "build-essential", "make ", "-dev"):
        assert word not in text, f"the runtime stage mentions {word!r}"


def test_runtime_user_and_entrypoint(dockerfile: tuple[dict[str, str], list[Stage]]) -> None:
    runtime = dockerfile[1][1]
    (user,) = runtime.all("USER")
    uid = user.split(":")[0]
    assert uid not in ("0", "root")
    assert re.search(rf"useradd .*--uid {uid}\b", " ".join(runtime.all("RUN")))
    assert runtime.all("ENTRYPOINT") == ['["spegel"]']  # exec form: signals reach spegel
    exposed = " ".join(runtime.all("EXPOSE")).split()
    assert {"5000", "5001/udp", "9090"} <= set(exposed)
    # The DaemonSet's registry container runs as the image's user.
    daemonset = (ROOT / "deploy" / "kubernetes" / "base" / "daemonset.yaml").read_text()
    assert f"runAsUser: {uid}" in daemonset


def _dockerignore_rules() -> list[tuple[bool, str]]:
    rules = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            rules.append((line.startswith("!"), line.lstrip("!").rstrip("/")))
    return rules


def _included(relative: str, rules: list[tuple[bool, str]]) -> bool:
    """.dockerignore's matching: a pattern matches the path or a parent; last match wins."""
    parts = relative.split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    included = True
    for negated, pattern in rules:
        if pattern.startswith("**/"):
            hit = any(fnmatch.fnmatch(part, pattern[3:]) for part in parts)
        else:
            hit = any(fnmatch.fnmatch(prefix, pattern) for prefix in prefixes)
        if hit:
            included = negated
    return included


@functools.cache
def _context_files() -> tuple[Path, ...]:
    """The files a ``docker build .`` sends."""
    rules = _dockerignore_rules()
    kept = []
    for directory, dirs, files in os.walk(ROOT):
        base = Path(directory).relative_to(ROOT).as_posix()
        base = "" if base == "." else base + "/"
        # Skip directories excluded with nothing under them re-included (.git, .venv).
        dirs[:] = [d for d in dirs if _included(base + d, rules)
                   or any(neg and pattern.startswith(base + d + "/") for neg, pattern in rules)]
        kept.extend(Path(directory) / f for f in files if _included(base + f, rules))
    return tuple(sorted(kept))


def test_build_context_is_the_sources_only() -> None:
    top = {p.relative_to(ROOT).parts[0] for p in _context_files()}
    assert top == {"pyproject.toml", "README.md", "spegel_core", "plugins"}
    assert not [p for p in _context_files() if "__pycache__" in p.parts]


def test_wheel_from_the_build_context(tmp_path: Path) -> None:
    """What the builder stage does, offline: the wheel built from the context alone holds
    the core, every built-in plugin and the ``spegel`` command."""
    import setuptools  # noqa: F401 - the build backend the wheel is made with
    context = tmp_path / "context"
    for path in _context_files():
        target = context / path.relative_to(ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--no-index", "--quiet", "--wheel-dir", str(tmp_path / "wheels"), str(context)],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    (wheel,) = (tmp_path / "wheels").glob("spegel-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    packages = {name.split("/")[0] for name in names}
    plugins = {p.name for p in (ROOT / "plugins").iterdir() if (p / "__init__.py").exists()}
    assert {"spegel_core", *plugins} <= packages
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "spegel = spegel_core.cli.main:main" in text


# -- the systemd unit ---------------------------------------------------------------------------
def _spegel() -> list[str]:
    script = Path(sys.executable).with_name("spegel")
    return [str(script)] if script.exists() else [sys.executable, "-m", "spegel_core.cli.main"]


def parse_unit(text: str) -> dict[str, list[tuple[str, str]]]:
    """Sections of a unit file as (key, value) pairs, in order (keys repeat)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            assert line.endswith("]"), line
            current = sections.setdefault(line[1:-1], [])
            continue
        assert current is not None and "=" in line, f"not a unit line: {line!r}"
        key, _, value = line.partition("=")
        current.append((key.strip(), value.strip()))
    return sections


def _values(section: list[tuple[str, str]], key: str) -> list[str]:
    return [v for k, v in section if k == key]


def unit_environment(service: list[tuple[str, str]], env_file: Path) -> dict[str, str]:
    """Environment= lines, then the EnvironmentFile (which wins), as systemd reads them."""
    env: dict[str, str] = {}
    for value in _values(service, "Environment"):
        for word in shlex.split(value):
            key, _, val = word.partition("=")
            env[key] = val
    for raw in env_file.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            key, _, val = line.partition("=")
            env[key.strip()] = val.strip()
    return env


def _expand(command: str, env: dict[str, str]) -> list[str]:
    words = shlex.split(command)
    return [re.sub(r"\$\{(\w+)\}", lambda m: env[m[1]], word) for word in words]


def test_unit_verifies() -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze is not None, "systemd-analyze is required (Debian systemd)"
    # verify checks that the commands exist: point them at this environment's spegel.
    spegel = Path(_spegel()[0])
    assert spegel.name == "spegel", "the spegel console script must sit next to this Python"
    text = UNIT.read_text().replace("/opt/spegel/bin/spegel", str(spegel))
    unit = Path(os.environ.get("TMPDIR", "/tmp")) / f"spegel-verify-{os.getpid()}"
    unit.mkdir(exist_ok=True)
    try:
        (unit / "spegel.service").write_text(text)
        result = subprocess.run([analyze, "verify", "--man=no", str(unit / "spegel.service")],
                                capture_output=True, text=True, timeout=60)
    finally:
        shutil.rmtree(unit, ignore_errors=True)
    # A misspelt key is only a warning (exit 0): any output at all fails the test.
    assert result.returncode == 0 and not result.stderr.strip() and not result.stdout.strip(), \
        result.stderr + result.stdout


def test_unit_commands_are_the_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ExecStartPre runs for real on a temporary certs.d; ExecStart's environment passes
    the validation ``spegel registry`` does at start."""
    sections = parse_unit(UNIT.read_text())
    service = sections["Service"]
    env = unit_environment(service, ENV_FILE)
    (pre,) = _values(service, "ExecStartPre")
    (start,) = _values(service, "ExecStart")
    assert start == "/opt/spegel/bin/spegel registry"
    assert _values(service, "EnvironmentFile") == ["-/etc/spegel/spegel.env"]
    assert _values(sections["Install"], "WantedBy") == ["multi-user.target"]
    assert "containerd.service" in _values(sections["Unit"], "After")[0]
    assert _values(service, "User") == ["root"]
    assert _values(service, "CapabilityBoundingSet") == [""]  # root without capabilities
    assert env["CONTAINERD_REGISTRY_CONFIG_PATH"] in _values(service, "ReadWritePaths")[0]

    certs = tmp_path / "certs.d"
    args = _expand(pre, env | {"CONTAINERD_REGISTRY_CONFIG_PATH": str(certs)})
    assert args[0] == "/opt/spegel/bin/spegel"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SPEGEL_")}
    result = subprocess.run([*_spegel(), *args[1:]], capture_output=True, text=True,
                            env=clean, timeout=60)
    assert result.returncode == 0, result.stderr
    port = env["SPEGEL_REGISTRY_ADDR"].rsplit(":", 1)[1]
    hosts = tomllib.loads((certs / "docker.io" / "hosts.toml").read_text())
    assert f"http://127.0.0.1:{port}" in hosts["host"]

    from spegel_core.cli.main import build_parser
    from spegel_core.cli.options import settings_values
    from spegel_core.config import env_name, load_config
    from spegel_core.plugin_manager import create_plugin_manager

    parser, settings = build_parser(create_plugin_manager())
    known = {env_name(name) for _, name, _ in settings.fields()}
    spegel_env = {k for k in env if k.startswith("SPEGEL_")}
    assert spegel_env <= known, f"no setting reads {sorted(spegel_env - known)}"
    for name in [n for n in os.environ if n.startswith("SPEGEL_")]:
        monkeypatch.delenv(name)
    for name in spegel_env:
        monkeypatch.setenv(name, env[name])
    namespace = parser.parse_args(_expand(start, env)[1:])
    config = load_config(settings, settings_values(namespace, settings))  # type: ignore[arg-type]
    assert config.core.content_store == "containerd"


def test_env_file_documents_both_bootstraps() -> None:
    text = ENV_FILE.read_text()
    assert re.search(r"^SPEGEL_BOOTSTRAP_KIND=static$", text, re.M)
    assert re.search(r"^#SPEGEL_BOOTSTRAP_KIND=dns$", text, re.M)
    assert "SPEGEL_DNS_BOOTSTRAP_DOMAIN" in text and "SPEGEL_CLUSTER_KEY_FILE" in text
