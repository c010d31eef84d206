"""The delivery files agree with the code they deploy (README "Running it for real").

There is no container engine or cluster in CI, so the Dockerfile, the Kubernetes
manifests, the compose file and the alert rules are checked statically, against the
real thing wherever there is one: probe paths against the admin server's routes,
settings against :class:`harvester.settings.Settings` validation, commands against the
CLI parser, alert expressions against the metrics the daemon exports.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import shlex
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast
from urllib.parse import parse_qsl, urlsplit

import asyncpg
import pytest
import yaml
from aiohttp import ClientSession, web
from aiohttp.test_utils import TestServer
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

from harvester.admin import Admin
from harvester.cli import build_parser
from harvester.errors import ConfigError
from harvester.metrics import Metrics
from harvester.settings import (
    ENV_PREFIX,
    SECRET_FIELDS,
    Settings,
    is_loopback_host,
    load_settings,
)
from harvester.store.operators import OperatorStore
from harvester.tools.simulator import Mix

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KUBE = DEPLOY / "kubernetes"
EXAMPLES = KUBE / "examples"
PLACEHOLDER = "REPLACE_ME"
# Headroom for the interpreter, libraries and buffers on top of the bodies being read.
BASELINE_MEMORY = 256 * 1024 * 1024
# The engine flushes decided outcomes for at least 5 s after the grace period.
FLUSH_MARGIN = 5.0


# ------------------------------------------------------------------ loading


def load_all(path: Path) -> list[dict[str, Any]]:
    documents = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert documents, f"{path} is empty"
    for document in documents:
        assert isinstance(document, dict), f"{path}: a document is not a mapping"
    return cast(list[dict[str, Any]], documents)


def load_one(path: Path) -> dict[str, Any]:
    documents = load_all(path)
    assert len(documents) == 1, f"{path}: expected one document"
    return documents[0]


def kustomization() -> dict[str, Any]:
    return load_one(KUBE / "kustomization.yaml")


def manifests() -> dict[str, dict[str, Any]]:
    """What `kubectl apply -k deploy/kubernetes` applies, by kind (one of each)."""
    by_kind: dict[str, dict[str, Any]] = {}
    for name in kustomization()["resources"]:
        for document in load_all(KUBE / name):
            assert document["kind"] not in by_kind, f"two {document['kind']}s"
            by_kind[document["kind"]] = document
    return by_kind


def examples() -> dict[str, dict[str, Any]]:
    """deploy/kubernetes/examples, which nothing applies, by "Kind/name": the Secrets and
    the CA ConfigMap that the operator creates."""
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for document in load_all(path):
            found[f"{document['kind']}/{document['metadata']['name']}"] = document
    return found


def deployment() -> dict[str, Any]:
    return manifests()["Deployment"]


def pod_spec() -> dict[str, Any]:
    return cast(dict[str, Any], deployment()["spec"]["template"]["spec"])


def container() -> dict[str, Any]:
    containers = pod_spec()["containers"]
    assert len(containers) == 1
    return cast(dict[str, Any], containers[0])


def configmap_env() -> dict[str, str]:
    return cast(dict[str, str], manifests()["ConfigMap"]["data"])


def secret_env(name: str = "harvester-secrets") -> dict[str, str]:
    return cast(dict[str, str], examples()[f"Secret/{name}"]["stringData"])


def compose() -> dict[str, Any]:
    return load_one(DEPLOY / "compose.yaml")


def compose_env(service: str) -> dict[str, str]:
    environment = compose()["services"][service].get("environment", {})
    assert isinstance(environment, dict), f"{service}: use the mapping form of environment"
    return {key: str(value) for key, value in environment.items()}


def alert_rules() -> list[dict[str, Any]]:
    document = load_one(DEPLOY / "prometheus" / "alerts.yaml")
    return [rule for group in document["groups"] for rule in group["rules"]]


def settings_from_env(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> Settings:
    """Exactly how the container sees them: as environment variables."""
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return load_settings(env_file=None)


def field_of(env_key: str) -> str:
    assert env_key.startswith(ENV_PREFIX), env_key
    return env_key.removeprefix(ENV_PREFIX).lower()


def parse_quantity(text: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "K": 10**3, "M": 10**6, "G": 10**9}
    match = re.fullmatch(r"(\d+)([KMG]i?)?", str(text))
    assert match, f"unsupported quantity {text!r}"
    return int(match[1]) * units.get(match[2] or "", 1)


# ------------------------------------------------------------------ the Dockerfile


class Stage:
    def __init__(self, base: str, name: str | None) -> None:
        self.base = base
        self.name = name
        self.instructions: list[tuple[str, str]] = []

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def last(self, keyword: str) -> str:
        found = self.all(keyword)
        assert found, f"stage {self.name or self.base} has no {keyword}"
        return found[-1]


def dockerfile_stages() -> list[Stage]:
    """Instructions per stage, continuation lines joined, comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in (ROOT / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "Dockerfile ends in a continuation"
    stages: list[Stage] = []
    global_args = dockerfile_global_args()
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            words = args.split()
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            base = re.sub(r"\$\{(\w+)\}", lambda m: global_args[m[1]], words[0])
            stages.append(Stage(base, name))
        elif keyword == "ARG" and not stages:
            continue
        else:
            assert stages, f"{keyword} before FROM"
            stages[-1].instructions.append((keyword, args.strip()))
    return stages


def dockerfile_global_args() -> dict[str, str]:
    """The ARGs before the first FROM (usable in FROM lines only), with their defaults."""
    found: dict[str, str] = {}
    for raw in (ROOT / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if line.upper().startswith("FROM "):
            break
        if line.upper().startswith("ARG "):
            key, _, default = line[4:].strip().partition("=")
            found[key] = default
    return found


def stage_args(stage: Stage) -> dict[str, str]:
    return {key: default for key, _, default in
            (args.partition("=") for args in stage.all("ARG"))}


def final_stage() -> Stage:
    return dockerfile_stages()[-1]


def exec_form(args: str) -> list[str]:
    parsed = yaml.safe_load(args)  # a JSON array is valid YAML
    assert isinstance(parsed, list), f"not exec form: {args}"
    return [str(item) for item in parsed]


def dockerfile_env(stage: Stage) -> dict[str, str]:
    env: dict[str, str] = {}
    for args in stage.all("ENV"):
        for word in shlex.split(args):
            key, sep, value = word.partition("=")
            assert sep, f"use ENV KEY=VALUE: {args}"
            env[key] = value
    return env


def image_uid() -> int:
    user = final_stage().last("USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit(), "USER must be numeric so that runAsNonRoot can verify it"
    assert not gid or gid.isdigit()
    return int(uid)


def test_the_final_stage_is_slim_python_with_the_venv_and_nothing_to_build_with() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2, "multi-stage: a builder and the runtime"
    builder, final = stages[0], stages[-1]
    assert builder.name, "the builder stage is named"
    assert final.base.startswith("python:3.11-slim")
    copies = final.all("COPY")
    assert copies, "the final stage copies the venv from the builder"
    assert all(f"--from={builder.name}" in args for args in copies), copies
    assert any("/opt/venv" in args for args in copies)
    for args in final.all("RUN"):
        assert not re.search(r"\b(apt-get|apt|apk|pip|pip3)\s+(install|add)\b", args), args
        assert not re.search(r"\b(gcc|g\+\+|clang|make|build-essential|python3-dev|libpq-dev)\b",
                             args), args
    # The builder builds a wheel of this project and installs it into the venv.
    built = " ".join(builder.all("RUN"))
    assert "uv build --wheel" in built
    assert "venv --without-pip /opt/venv" in built
    assert "harvester-*.whl" in built
    assert "[embedded]" not in built, "production sets a DSN; no embedded PostgreSQL"
    assert "--extra embedded" not in built and "--all-extras" not in built


def test_the_dockerfile_pulls_no_frontend_image() -> None:
    """A `# syntax=` directive makes BuildKit fetch a frontend from a registry first."""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if not line.startswith("#"):
            break
        assert not re.match(r"#\s*syntax\s*=", line, re.IGNORECASE), line
        assert not re.match(r"#\s*check\s*=", line, re.IGNORECASE), line


def test_index_and_ca_are_builder_arguments_that_never_reach_the_image() -> None:
    stages = dockerfile_stages()
    builder, final = stages[0], stages[-1]
    declared = stage_args(builder)
    assert declared["PIP_INDEX_URL"].startswith("https://")
    assert declared["EXTRA_CA_PEM"] == ""
    for stage in stages[1:]:
        assert not {"PIP_INDEX_URL", "EXTRA_CA_PEM"} & set(stage_args(stage)), stage.name
        for args in stage.all("COPY"):
            assert "/build" not in args, "the builder's CA bundle and tools stay there"
    assert not {"PIP_INDEX_URL", "EXTRA_CA_PEM"} & set(dockerfile_global_args())
    env = dockerfile_env(builder)
    assert env["PIP_CERT"] == env["SSL_CERT_FILE"] == "/build/ca.pem"
    assert not {"PIP_CERT", "SSL_CERT_FILE"} & set(dockerfile_env(final))
    installs = [args for args in builder.all("RUN") if "install" in args]
    assert installs
    for args in installs:
        assert '--index-url "$PIP_INDEX_URL"' in args or "--no-deps /build/wheels" in args, args
    # Index credentials come as a secret mount (no log, layer or cache keeps one).
    downloads = [args for args in builder.all("RUN") if "--index-url" in args]
    for args in downloads:
        assert args.startswith("--mount=type=secret,id=netrc,target=/root/.netrc"), args


def test_the_image_installs_exactly_what_uv_lock_pins() -> None:
    builder = dockerfile_stages()[0]
    runs = " ".join(builder.all("RUN"))
    assert "uv export --locked --no-dev --no-emit-project" in runs
    assert "uv export --locked --only-group build" in runs
    assert "--require-hashes --only-binary :all: --no-deps --requirement /build/runtime.txt" in runs
    assert "--build-constraints /build/build.txt --require-hashes" in runs
    copied = [args.split()[:-1] for args in builder.all("COPY")]
    assert ["pyproject.toml", "uv.lock"] in copied
    assert not dockerignore_excludes("uv.lock")
    # The uv of the image is the uv of CI.
    ci = re.search(r"^UV_VERSION=(\S+)$", (ROOT / ".ci" / "run").read_text(), re.MULTILINE)
    assert ci, ".ci/run pins UV_VERSION"
    assert stage_args(builder)["UV_VERSION"] == ci[1]


def readme_commands(section: str) -> list[str]:
    """The commands of the first ``sh`` block of a README section, comments dropped."""
    text = (ROOT / "README.md").read_text()
    body = text[text.index(f"\n## {section}\n"):]
    block = body[body.index("```sh\n") + 6:body.index("\n```", body.index("```sh\n"))]
    return [line.partition("#")[0].strip() for line in block.splitlines() if line.strip()]


def test_ci_runs_the_readmes_two_commands_as_they_are_written() -> None:
    """README "Try it" and "Test it" open with one command each that needs nothing but
    uv, and .ci/run runs exactly those (environment assignments before them aside), with
    UV_LOCKED=1 so that a lock older than pyproject.toml fails instead of being updated."""
    ci = (ROOT / ".ci" / "run").read_text()
    ci_commands = {re.sub(r"^(?:[A-Z_]+=\S+ )*", "", line.strip()) for line in ci.splitlines()}
    for section in ("Try it", "Test it"):
        first = readme_commands(section)[0]
        assert first.startswith("uv run "), (section, first)
        assert first in ci_commands, f".ci/run does not run {first!r} ({section})"
    assert re.search(r"^export .*\bUV_LOCKED=1\b", ci, re.MULTILINE)
    assert "rm -rf .venv" in ci, "uv run makes the virtualenv, as on a fresh clone"


def test_uv_lock_is_current_with_pyproject() -> None:
    """What `uv lock --check` compares: the lock records the requirements it was made
    from. A dependency added without scripts/lock fails here, offline."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    own = next(package for package in lock["package"] if package["name"] == "harvester")

    def normal(name: str, specifier: str, extra: str | None = None) -> tuple[str, str, str]:
        return (canonicalize_name(name), str(SpecifierSet(specifier)), extra or "")

    wanted = {normal(r.name, str(r.specifier)) for r in map(Requirement, project["project"]["dependencies"])}
    for extra, requirements in project["project"]["optional-dependencies"].items():
        wanted |= {normal(r.name, str(r.specifier), extra) for r in map(Requirement, requirements)}
    recorded = set()
    for item in own["metadata"]["requires-dist"]:
        marker = re.fullmatch(r"extra == '([\w-]+)'", item.get("marker", ""))
        recorded.add(normal(item["name"], item.get("specifier", ""), marker[1] if marker else None))
    assert wanted == recorded, "uv.lock is stale: run scripts/lock"
    groups = {name: {normal(r.name, str(r.specifier), ",".join(sorted(r.extras)))
                     for r in map(Requirement, requirements)}
              for name, requirements in project["dependency-groups"].items()}
    locked_groups = {name: {normal(item["name"], item.get("specifier", ""),
                                   ",".join(sorted(item.get("extras", [])))) for item in items}
                     for name, items in own["metadata"]["requires-dev"].items()}
    assert groups == locked_groups, "uv.lock is stale: run scripts/lock"
    # The locked build backend is the one [build-system] asks for.
    assert {normal(r.name, str(r.specifier)) for r in
            map(Requirement, project["build-system"]["requires"])} == groups["build"]


def test_uv_run_installs_the_embedded_postgresql_and_the_dev_tools_the_image_neither() -> None:
    """README "Try it": `uv run harvester demo` and `uv run pytest` work on a fresh clone
    because what uv syncs by default (the dev group) is the project's own `embedded` and
    `dev` extras; the image exports --no-dev, so neither pgserver nor a dev tool is in it."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    default_groups = project["tool"]["uv"].get("default-groups", ["dev"])
    synced: set[str] = set()
    for group in default_groups:
        for requirement in map(Requirement, project["dependency-groups"][group]):
            if canonicalize_name(requirement.name) == "harvester":
                synced |= requirement.extras
    assert {"embedded", "dev"} <= synced
    extras = project["project"]["optional-dependencies"]
    assert any(Requirement(r).name == "pgserver" for r in extras["embedded"])
    assert any(Requirement(r).name == "pytest" for r in extras["dev"])
    runs = " ".join(dockerfile_stages()[0].all("RUN"))
    exports = re.findall(r"uv export [^&]*", runs)
    assert exports
    for export in exports:
        assert "--no-dev" in export or "--only-group build" in export, export
        assert not re.search(r"--all-groups|--all-extras|--extra|--group dev", export), export


def test_the_image_runs_harvester_run_as_a_fixed_non_root_user() -> None:
    final = final_stage()
    assert image_uid() > 0
    assert exec_form(final.last("ENTRYPOINT")) == ["harvester"]
    command = exec_form(final.last("CMD"))
    assert command == ["run"]
    build_parser().parse_args(command)  # a real sub-command


def test_the_image_listens_on_the_admin_port_and_checks_health_without_curl(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    final = final_stage()
    env = dockerfile_env(final)
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert "/opt/venv/bin" in env["PATH"]
    harvester_env = {k: v for k, v in env.items() if k.startswith(ENV_PREFIX)}
    settings = settings_from_env(monkeypatch, harvester_env)
    # Loopback unless the deployment says otherwise: under --network host a baked-in
    # 0.0.0.0 would put /metrics and the write API on every host interface.
    assert "HARVESTER_ADMIN_HOST" not in harvester_env
    assert is_loopback_host(settings.admin_host)
    assert final.last("EXPOSE").split() == [f"{settings.admin_port}"]
    check = final.last("HEALTHCHECK")
    assert "curl" not in check
    assert "wget" not in check
    command = exec_form(check.split("CMD", 1)[1])
    assert command[0] == "harvester"
    parsed = build_parser().parse_args(command[1:])
    assert parsed.command == "healthcheck"
    assert not parsed.ready, "liveness: the database being down is no reason to restart"


def test_the_working_directory_is_root_owned_and_not_tmp() -> None:
    """The settings read .env from the working directory: nobody but root may write there."""
    final = final_stage()
    workdirs = [args for kw, args in final.instructions if kw == "WORKDIR"]
    assert workdirs and workdirs[-1] not in ("/tmp", "/var/tmp", "/dev/shm")
    keywords = [kw for kw, _ in final.instructions]
    assert keywords.index("WORKDIR") < keywords.index("USER"), \
        "made before USER, so that even BuildKit makes it root's"
    mounts = {m["mountPath"] for m in container()["volumeMounts"]}
    assert workdirs[-1] not in mounts, "Kubernetes must not mount a writable volume there"


def dockerignore_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as a regex: ``*`` and ``?`` stay within one path
    component, ``**/`` spans any number of them, ``[...]`` is a character class."""
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i:end + 1], end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def dockerignore_excludes(path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents wins."""
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.strip().startswith("#")]
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        regex = dockerignore_regex(pattern.removeprefix("!").rstrip("/"))
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            excluded = not negated
    return excluded


def test_the_build_context_holds_the_package_and_never_secrets_or_history() -> None:
    builder = dockerfile_stages()[0]
    sources = [word for args in builder.all("COPY") for word in args.split()[:-1]
               if not word.startswith("--")]
    for source in sources:
        assert not dockerignore_excludes(source.rstrip("/")), f"COPY {source} is ignored"
    for kept in ("pyproject.toml", "uv.lock", "README.md", "harvester/engine.py",
                 "sql/001_initial.sql"):
        assert not dockerignore_excludes(kept), kept
    for dropped in (".git/config", ".env", ".venv/bin/python", "tests/conftest.py",
                    "harvester/__pycache__/engine.cpython-311.pyc", "deploy/compose.yaml"):
        assert dockerignore_excludes(dropped), dropped


# ------------------------------------------------------------------ Kubernetes


def test_the_kustomization_lists_every_manifest_of_the_expected_kinds() -> None:
    listed = kustomization()["resources"]
    present = sorted(p.name for p in KUBE.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(listed) == present
    kinds = {kind: doc["apiVersion"] for kind, doc in manifests().items()}
    assert kinds == {
        "ConfigMap": "v1",
        "Deployment": "apps/v1",
        "Service": "v1",
        "PodDisruptionBudget": "policy/v1",
    }
    images = {image["name"] for image in kustomization()["images"]}
    assert container()["image"] in images


def test_selectors_match_the_pods_and_env_comes_from_the_configmap_and_secret() -> None:
    found = manifests()
    labels = deployment()["spec"]["template"]["metadata"]["labels"]
    selectors = [
        deployment()["spec"]["selector"]["matchLabels"],
        found["Service"]["spec"]["selector"],
        found["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"],
    ]
    for selector in selectors:
        assert selector.items() <= labels.items(), selector
    sources = container()["envFrom"]
    assert sources == [{"configMapRef": {"name": found["ConfigMap"]["metadata"]["name"]}}]
    # The Secret is mounted as files, not poured into the environment.
    assert secret_files(), "the Secret is mounted and named by *_FILE variables"
    assert found["PodDisruptionBudget"]["spec"]["maxUnavailable"] == 1
    assert deployment()["spec"]["replicas"] >= 2


def mounted(kind: str) -> dict[str, str]:
    """mountPath -> name of the Secret or ConfigMap (``kind``: secret, configMap)."""
    volumes = {v["name"]: v for v in pod_spec()["volumes"]}
    found: dict[str, str] = {}
    for mount in container()["volumeMounts"]:
        volume = volumes[mount["name"]]
        if kind in volume:
            assert mount.get("readOnly") is True, mount["mountPath"]
            source = volume[kind]
            found[mount["mountPath"]] = source.get("secretName") or source["name"]
    return found


def container_env() -> dict[str, str]:
    return {e["name"]: e["value"] for e in container().get("env", [])}


def secret_files() -> dict[str, str]:
    """``HARVESTER_*_FILE`` variable -> Secret key it reads, checked against the mount."""
    secret_name = examples()["Secret/harvester-secrets"]["metadata"]["name"]
    mounts = mounted("secret")
    found: dict[str, str] = {}
    for variable, path in container_env().items():
        if not variable.endswith("_FILE"):
            continue
        directory, _, key = path.rpartition("/")
        assert mounts.get(directory) == secret_name, f"{variable}: {path} is not in the Secret"
        found[variable] = key
    return found


def test_secrets_reach_the_daemon_as_files_of_the_secret(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    """Each *_FILE variable names a key the Secret has, for a secret setting; with the
    Secret written out as the kubelet would, the pod's settings are valid."""
    secret = secret_env()
    files = secret_files()
    assert set(files) == {"HARVESTER_DATABASE_URL_FILE", "HARVESTER_API_TOKEN_FILE"}
    for variable, key in files.items():
        assert key in secret, f"{variable}: the Secret has no key {key}"
        assert field_of(variable.removesuffix("_FILE")) in SECRET_FIELDS
        (tmp_path / key).write_text(secret[key] + "\n")
        monkeypatch.setenv(variable, str(tmp_path / key))
    assert not {field_of(k) for k in container_env() if not k.endswith("_FILE")} & SECRET_FIELDS
    settings = settings_from_env(monkeypatch, configmap_env())
    settings.require_api_token()
    assert settings.database_url is not None
    assert settings.database_url.get_secret_value() == secret["HARVESTER_DATABASE_URL"]


def test_the_dsn_checks_the_server_certificate_against_a_mounted_ca() -> None:
    """README "TLS to PostgreSQL": sslmode=verify-full and a CA file the pod mounts."""
    query = dict(parse_qsl(urlsplit(secret_env()["HARVESTER_DATABASE_URL"]).query))
    assert query["sslmode"] == "verify-full"
    directory, _, key = query["sslrootcert"].rpartition("/")
    ca_name = mounted("configMap").get(directory)
    assert ca_name is not None, f"{query['sslrootcert']} is not in a mounted ConfigMap"
    ca = examples()[f"ConfigMap/{ca_name}"]
    assert key in ca["data"]
    assert PLACEHOLDER in ca["data"][key], "an example, not someone's CA"


def admin_app() -> web.Application:
    # A real but never-connected pool (it needs a running loop, so callers are async):
    # building the routes touches no database.
    store = OperatorStore(asyncpg.create_pool("postgresql://unused@127.0.0.1:1/unused"))

    async def checks() -> dict[str, bool]:
        return {}

    return Admin(load_settings(env_file=None), store, Metrics(), checks).app()


def served_get_paths(app: web.Application) -> set[str]:
    return {route.resource.canonical for route in app.router.routes()
            if route.method == "GET" and route.resource is not None}


def resolve_port(port: int | str) -> int:
    if isinstance(port, int):
        return port
    named = {p["name"]: p["containerPort"] for p in container()["ports"]}
    assert port in named, f"probe port {port!r} is not a container port"
    return int(named[port])


async def test_probes_ask_paths_the_admin_server_serves_on_its_port() -> None:
    app = admin_app()
    served = served_get_paths(app)
    admin_port = int(configmap_env()["HARVESTER_ADMIN_PORT"])
    probes = {name: container()[name] for name in ("startupProbe", "livenessProbe",
                                                    "readinessProbe")}
    assert probes["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert probes["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for name, probe in probes.items():
        assert probe["httpGet"]["path"] in served, name
        assert resolve_port(probe["httpGet"]["port"]) == admin_port, name
    annotations = deployment()["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/path"] in served
    assert int(annotations["prometheus.io/port"]) == admin_port
    service_port = manifests()["Service"]["spec"]["ports"][0]
    assert resolve_port(service_port["targetPort"]) == admin_port
    # Liveness must not depend on the database: it answers with none at all.
    server = TestServer(app)
    await server.start_server()
    try:
        async with ClientSession() as session, session.get(
                server.make_url(probes["livenessProbe"]["httpGet"]["path"])) as resp:
            assert resp.status == 200
    finally:
        await server.close()


def test_the_pod_runs_non_root_read_only_with_no_privileges() -> None:
    spec = pod_spec()
    pod = spec["securityContext"]
    box = container()["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert box["runAsNonRoot"] is True
    assert pod["runAsUser"] == box["runAsUser"] == image_uid()
    assert box["readOnlyRootFilesystem"] is True
    assert box["allowPrivilegeEscalation"] is False
    assert box["capabilities"]["drop"] == ["ALL"]
    assert "add" not in box["capabilities"]
    assert box.get("privileged", False) is False
    assert pod["seccompProfile"]["type"] == "RuntimeDefault"
    assert spec["automountServiceAccountToken"] is False
    mounts = {m["mountPath"]: m["name"] for m in container()["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]


def test_service_links_cannot_leak_into_harvester_settings() -> None:
    """A Service named e.g. harvester-admin would inject HARVESTER_ADMIN_PORT=tcp://…"""
    assert pod_spec()["enableServiceLinks"] is False
    fields = {f"{ENV_PREFIX}{name.upper()}" for name in Settings.model_fields}
    service = manifests()["Service"]
    prefix = service["metadata"]["name"].upper().replace("-", "_")
    injected = {f"{prefix}_SERVICE_HOST", f"{prefix}_SERVICE_PORT", f"{prefix}_PORT"}
    for port in service["spec"]["ports"]:
        injected.add(f"{prefix}_SERVICE_PORT_{port['name'].upper().replace('-', '_')}")
        base = f"{prefix}_PORT_{port['port']}_{port['protocol']}"
        injected |= {base, f"{base}_PROTO", f"{base}_PORT", f"{base}_ADDR"}
    assert not injected & fields


def test_the_configmap_and_secret_make_valid_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    config, secret = configmap_env(), secret_env()
    for key, value in {**config, **secret}.items():
        assert field_of(key) in Settings.model_fields, f"{key} is not a setting"
        assert isinstance(value, str), f"{key}: ConfigMap/Secret values are strings"
    assert not {field_of(k) for k in config} & SECRET_FIELDS, "secrets belong in the Secret"
    assert {field_of(k) for k in secret} <= SECRET_FIELDS
    settings = settings_from_env(monkeypatch, {**config, **secret})
    settings.require_api_token()
    assert settings.database_url is not None
    assert settings.admin_host == "0.0.0.0", "probes come from outside the container"
    assert settings.log_format == "json"
    assert not settings.insecure


@pytest.mark.parametrize("name", ["harvester-secrets", "harvester-migrate-secrets"])
def test_the_secret_examples_hold_placeholders_only(name: str) -> None:
    secret = examples()[f"Secret/{name}"]
    assert "data" not in secret, "base64 data could hide a real value"
    values = secret_env(name)
    assert "HARVESTER_ADMIN_TOKEN" not in values, \
        "applied unchanged, the example must not open the write API with a known token"
    for key, value in values.items():
        scanned = value
        if key == "HARVESTER_DATABASE_URL":
            parts = urlsplit(value)
            assert parts.password == PLACEHOLDER
            # The query holds settings (sslmode, the CA's path), never a password.
            assert not {k for k, _ in parse_qsl(parts.query)} & {"password", "sslpassword"}
            # The user is a role name, the password was checked above.
            scanned = parts._replace(query="", netloc=parts.netloc.rpartition("@")[2]).geturl()
        else:
            assert value == PLACEHOLDER, key
        for run in re.findall(r"[A-Za-z0-9_+/=-]{16,}", scanned):
            assert run == PLACEHOLDER, f"{key}: {run!r} looks like a real secret"


def test_shutdown_grace_fits_in_the_termination_grace_period(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = settings_from_env(monkeypatch, {**configmap_env(), **secret_env()})
    period = pod_spec()["terminationGracePeriodSeconds"]
    assert period > settings.shutdown_grace + FLUSH_MARGIN


def test_the_memory_limit_covers_every_request_reading_a_maximal_body(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = settings_from_env(monkeypatch, {**configmap_env(), **secret_env()})
    resources = container()["resources"]
    limit = parse_quantity(resources["limits"]["memory"])
    assert parse_quantity(resources["requests"]["memory"]) <= limit
    assert settings.concurrency * settings.max_body_bytes + BASELINE_MEMORY <= limit
    assert "cpu" in resources["requests"]


def test_the_container_args_are_a_real_command_that_leaves_migrating_to_the_job() -> None:
    """The daemons' role has no DDL (deploy/runtime-role.sql): they run without
    migrating, and wait, not ready, for the migrate Job (README "Upgrades")."""
    args = container()["args"]
    parsed = build_parser().parse_args(args)
    assert parsed.command == "run"
    assert parsed.no_migrate


# ------------------------------------------------------------------ what is applied


def applied_sets() -> dict[str, tuple[dict[str, Any], list[dict[str, Any]]]]:
    """Every kustomization under deploy/kubernetes, with the documents it applies."""
    found: dict[str, tuple[dict[str, Any], list[dict[str, Any]]]] = {}
    for path in sorted(KUBE.rglob("kustomization.yaml")):
        own = load_one(path)
        documents = [document for name in own.get("resources", [])
                     for document in load_all(path.parent / name)]
        found[path.parent.relative_to(KUBE).as_posix()] = (own, documents)
    return found


def migrate_pod_spec() -> dict[str, Any]:
    (job,) = load_all(KUBE / "migrate" / "job.yaml")
    return cast(dict[str, Any], job["spec"]["template"])


def test_no_apply_overwrites_a_secret_or_the_ca_with_an_example() -> None:
    """Issue 23 item 7: `kubectl apply -k` of any directory here applies no Secret and no
    placeholder; the Secrets and the CA the pods mount are the operator's to create, and
    examples/ (applied by nothing) names each of them."""
    sets = applied_sets()
    assert set(sets) == {".", "migrate", "network-policy"}
    applied: set[tuple[str, str]] = set()
    for where, (own, documents) in sets.items():
        assert not {"secretGenerator", "configMapGenerator", "components"} & set(own), where
        assert not [r for r in own.get("resources", []) if "example" in r], where
        for document in documents:
            assert document["kind"] != "Secret", where
            assert PLACEHOLDER not in yaml.safe_dump(document), where
            applied.add((document["kind"], document["metadata"]["name"]))
    assert not (EXAMPLES / "kustomization.yaml").exists()
    shown = {tuple(key.split("/", 1)) for key in examples()}
    for spec in (pod_spec(), migrate_pod_spec()["spec"]):
        for volume in spec["volumes"]:
            if "secret" in volume:
                assert ("Secret", volume["secret"]["secretName"]) in shown, volume
            if "configMap" in volume:
                name = volume["configMap"]["name"]
                assert ("ConfigMap", name) in shown ^ applied, volume
    for document in examples().values():
        assert PLACEHOLDER in yaml.safe_dump(document), document["metadata"]["name"]


# ------------------------------------------------------------------ NetworkPolicy

# RFC 5737: addresses for documentation, routed nowhere; the policy's placeholders.
DOCUMENTATION_NETWORKS = [ipaddress.IPv4Network(n) for n in
                          ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24")]


def network_policies() -> list[dict[str, Any]]:
    directory = KUBE / "network-policy"
    assert load_one(directory / "kustomization.yaml")["resources"] == ["networkpolicy.yaml"]
    policies = load_all(directory / "networkpolicy.yaml")
    for policy in policies:
        assert (policy["apiVersion"], policy["kind"]) == ("networking.k8s.io/v1", "NetworkPolicy")
    return policies


def allowed(labels: dict[str, str], direction: str) -> list[dict[str, Any]]:
    """The ingress or egress rules of every policy that selects a pod with ``labels``
    (Kubernetes allows their union); each policy restricts both directions."""
    rules: list[dict[str, Any]] = []
    for policy in network_policies():
        spec = policy["spec"]
        assert spec["policyTypes"] == ["Ingress", "Egress"], policy["metadata"]["name"]
        if spec["podSelector"]["matchLabels"].items() <= labels.items():
            rules += spec.get(direction, [])
    for rule in rules:
        # An absent or empty `from`/`to` or `ports` means "anything".
        assert rule.get("from" if direction == "ingress" else "to"), rule
        assert rule.get("ports"), rule
    return rules


def test_the_network_policy_lets_prometheus_in_and_only_postgresql_the_api_and_dns_out() -> None:
    """Issue 23 item 9. The kubelet's probes need no rule: NetworkPolicy always allows a
    pod's own node."""
    daemon = deployment()["spec"]["template"]["metadata"]["labels"]
    job = migrate_pod_spec()["metadata"]["labels"]
    assert not allowed(job, "ingress")
    (ingress,) = allowed(daemon, "ingress")
    (peer,) = ingress["from"]  # one peer: its namespace AND its pods, not either
    assert peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
    assert peer["podSelector"]["matchLabels"]["app.kubernetes.io/name"] == "prometheus"
    assert [(p["protocol"], resolve_port(p["port"])) for p in ingress["ports"]] == [
        ("TCP", int(configmap_env()["HARVESTER_ADMIN_PORT"]))]

    database_ports = {urlsplit(secret_env(name)["HARVESTER_DATABASE_URL"]).port or 5432
                      for name in ("harvester-secrets", "harvester-migrate-secrets")}
    api = urlsplit(configmap_env()["HARVESTER_API_BASE_URL"])
    api_port = api.port or {"https": 443, "http": 80}[api.scheme]
    dns = {("UDP", 53), ("TCP", 53)}

    def destinations(labels: dict[str, str]) -> dict[tuple[str, int], list[dict[str, Any]]]:
        found: dict[tuple[str, int], list[dict[str, Any]]] = {}
        for rule in allowed(labels, "egress"):
            for port in rule["ports"]:
                found.setdefault((port["protocol"], int(port["port"])), []).extend(rule["to"])
        return found

    for labels, wanted in ((daemon, {("TCP", api_port)}), (job, set())):
        reach = destinations(labels)
        assert set(reach) == {("TCP", port) for port in database_ports} | dns | wanted, labels
        for (_, port), peers in reach.items():
            for peer in peers:
                if port == 53:
                    assert peer["namespaceSelector"]["matchLabels"] == {
                        "kubernetes.io/metadata.name": "kube-system"}
                    assert peer["podSelector"]["matchLabels"] == {"k8s-app": "kube-dns"}
                    continue
                # PostgreSQL and the API: the operator's addresses, shipped as
                # placeholders that reach nothing until they are filled in.
                network = ipaddress.IPv4Network(peer["ipBlock"]["cidr"])
                assert any(network.subnet_of(doc) for doc in DOCUMENTATION_NETWORKS), network
                assert "except" not in peer["ipBlock"]


# ------------------------------------------------------------------ compose


def compose_command(service: str) -> list[str]:
    command = compose()["services"][service]["command"]
    assert isinstance(command, list), f"{service}: use the exec form"
    return [str(word) for word in command]


def test_compose_starts_postgres_the_simulator_a_migration_and_the_daemon() -> None:
    services = compose()["services"]
    assert {"postgres", "simulator", "migrate", "daemon"} <= set(services)
    for name in ("postgres", "simulator", "daemon"):
        assert "test" in services[name]["healthcheck"], f"{name} has a healthcheck"
    depends = services["daemon"]["depends_on"]
    assert depends["postgres"]["condition"] == "service_healthy"
    assert depends["simulator"]["condition"] == "service_healthy"
    assert depends["migrate"]["condition"] == "service_completed_successfully"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["migrate"]["restart"] == "no"
    for name in ("simulator", "migrate", "daemon", "feed"):
        assert services[name]["build"]["context"] == ".."
        assert services[name]["read_only"] is True
    assert (DEPLOY / services["daemon"]["build"]["context"] / "Dockerfile").is_file()


def test_compose_commands_parse_and_the_daemon_runs_without_migrating() -> None:
    parser = build_parser()
    assert compose_command("migrate") == ["migrate"]
    daemon = parser.parse_args(compose_command("daemon"))
    assert daemon.command == "run"
    assert daemon.no_migrate
    simulate = parser.parse_args(compose_command("simulator"))
    assert simulate.command == "simulate"
    assert simulate.host == "0.0.0.0"
    Mix.preset(simulate.mix)  # a preset that exists


def test_compose_settings_are_valid_and_point_the_daemon_at_the_services(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    services = compose()["services"]
    for name in ("simulator", "migrate", "daemon", "feed"):
        for key in compose_env(name):
            assert field_of(key) in Settings.model_fields, f"{name}: {key} is not a setting"
    env = compose_env("daemon")
    settings = settings_from_env(monkeypatch, env)
    settings.require_api_token()
    simulate = build_parser().parse_args(compose_command("simulator"))
    upstream = urlsplit(settings.api_base_url)
    assert (upstream.hostname, upstream.port) == ("simulator", simulate.port)
    assert settings.insecure, "plain http to another container"
    # ...and the daemon would refuse to start without HARVESTER_INSECURE.
    monkeypatch.delenv("HARVESTER_INSECURE")
    with pytest.raises(ConfigError, match="HARVESTER_INSECURE"):
        load_settings(env_file=None)
    assert settings.database_url is not None
    database = urlsplit(settings.database_url.get_secret_value())
    postgres = services["postgres"]["environment"]
    assert database.hostname == "postgres"
    assert (database.username, database.password, database.path) == (
        postgres["POSTGRES_USER"], postgres["POSTGRES_PASSWORD"], f"/{postgres['POSTGRES_DB']}")
    assert compose_env("migrate")["HARVESTER_DATABASE_URL"] == env["HARVESTER_DATABASE_URL"]
    assert settings.admin_host == "0.0.0.0"
    published = [str(p) for p in services["daemon"]["ports"]]
    assert any(p.endswith(f":{settings.admin_port}") for p in published)
    grace = services["daemon"]["stop_grace_period"]
    assert grace.endswith("s")
    assert float(grace[:-1]) > settings.shutdown_grace + FLUSH_MARGIN


async def test_compose_healthchecks_ask_ports_that_are_served() -> None:
    services = compose()["services"]
    simulate = build_parser().parse_args(compose_command("simulator"))
    simulator_check = " ".join(services["simulator"]["healthcheck"]["test"])
    assert f"127.0.0.1:{simulate.port}/" in simulator_check
    # The daemon's: `harvester healthcheck --ready`, which finds the admin address itself.
    test = services["daemon"]["healthcheck"]["test"]
    assert test[:2] == ["CMD", "harvester"]
    parsed = build_parser().parse_args(test[2:])
    assert parsed.command == "healthcheck"
    assert parsed.ready
    assert "/readyz" in served_get_paths(admin_app())


# ------------------------------------------------------------------ alerts


def exported_metrics() -> dict[str, set[str]]:
    """Every series name the daemon exports, with the label names it may carry."""
    metrics = Metrics()

    async def read() -> dict[str, float]:
        return {}

    metrics.attach_queue_gauges(read)
    names: dict[str, set[str]] = {}
    suffixes = {"counter": ["_total", "_created"], "histogram": ["_bucket", "_sum", "_count",
                                                                 "_created"],
                "summary": ["_sum", "_count", "_created"], "info": ["_info"]}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for suffix in suffixes.get(family.type, [""]):
            names.setdefault(family.name + suffix, set())
        for sample in family.samples:
            names.setdefault(sample.name, set()).update(sample.labels)
    # Labelled metrics with no child yet have no samples: take their declared labels.
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            for suffix in ("", "_total", "_bucket", "_sum", "_count"):
                if value._name + suffix in names:
                    names[value._name + suffix].update(value._labelnames)
    return names


PROMQL_WORDS = {"sum", "max", "min", "avg", "count", "rate", "irate", "increase", "absent",
                "clamp_min", "clamp_max", "time", "by", "without", "and", "or", "unless",
                "on", "ignoring", "bool", "offset", "histogram_quantile", "le"}
BUILTIN_SERIES = {"up"}
# Read from the shared database: every replica reports the same value.
SHARED_GAUGES = {"harvester_queue_jobs", "harvester_due_jobs", "harvester_oldest_due_age_seconds",
                 "harvester_stuck_open", "harvester_oldest_stuck_age_seconds",
                 "harvester_queue_gauges_read_timestamp_seconds",
                 "harvester_queue_jobs_by_upstream_status",
                 "harvester_oldest_finished_age_seconds", "harvester_table_rows",
                 "harvester_table_bytes"}


def selectors(expr: str) -> Iterator[tuple[str, dict[str, str], str]]:
    """(series name, label matchers, enclosing function) for each series in ``expr``."""
    stack: list[str] = []
    position = 0
    token = re.compile(r'\d+(?:\.\d+)?(?:e[+-]?\d+)?|[a-zA-Z_:][a-zA-Z0-9_:]*|\{[^}]*\}'
                       r'|\[[^\]]*\]|"[^"]*"|\(|\)|\S')
    words = list(token.finditer(expr))
    for index, match in enumerate(words):
        text = match.group()
        position = match.end()
        if text == "(":
            before = words[index - 1].group() if index else ""
            stack.append(before if re.fullmatch(r"[a-z_]+", before) else "")
        elif text == ")":
            stack.pop()
        elif re.fullmatch(r"[a-zA-Z_:][a-zA-Z0-9_:]*", text) and text not in PROMQL_WORDS:
            following = expr[position:].lstrip()
            if following.startswith("("):
                continue  # a function name
            previous = words[index - 1].group() if index else ""
            if previous in ("by", "without") or (stack and stack[-1] in ("by", "without")):
                continue  # a label list
            labels: dict[str, str] = {}
            if following.startswith("{"):
                body = following[1:following.index("}")]
                labels = dict(re.findall(r'(\w+)\s*=~?\s*"([^"]*)"', body))
            yield text, labels, stack[-1] if stack else ""


def test_alert_rules_are_complete_and_readable() -> None:
    rules = alert_rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names))
    for rule in rules:
        assert set(rule) == {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]
        assert rule["labels"]["severity"] in {"warning", "critical"}
        for key in ("summary", "description", "runbook"):
            assert len(rule["annotations"][key].strip()) > 20, (rule["alert"], key)
        assert rule["expr"].count("(") == rule["expr"].count(")")


def test_alerts_cover_the_failure_modes_an_operator_must_hear_about() -> None:
    referenced = {name for rule in alert_rules() for name, _, _ in selectors(rule["expr"])}
    for needed in ("up", "harvester_oldest_stuck_age_seconds", "harvester_auth_circuit_open",
                   "harvester_oldest_due_age_seconds", "harvester_failed_total",
                   "harvester_landed_total"):
        assert needed in referenced, needed
    stuck = next(r for r in alert_rules() if "harvester_oldest_stuck_age_seconds" in r["expr"])
    assert "> 900" in stuck["expr"]  # open for 15 minutes


def test_alert_expressions_use_only_metrics_and_labels_the_daemon_exports() -> None:
    exported = exported_metrics()
    for rule in alert_rules():
        found = list(selectors(rule["expr"]))
        assert found, rule["alert"]
        for name, labels, function in found:
            if name in BUILTIN_SERIES:
                continue
            assert name in exported, f"{rule['alert']}: {name} is not exported"
            unknown = set(labels) - exported[name]
            assert not unknown, f"{rule['alert']}: {name} has no label {unknown}"
            if name in SHARED_GAUGES:
                assert function == "max", f"{rule['alert']}: aggregate {name} with max()"


def test_the_selector_parser_sees_what_an_expression_references() -> None:
    """The metric-name check above is only as good as this little tokenizer."""
    parsed = list(selectors(
        'sum by (reason) (rate(harvester_failed_total{reason="forbidden"}[5m])) '
        '/ clamp_min(max(harvester_due_jobs), 1) and absent(up{job="harvester"} == 1)'))
    assert parsed == [
        ("harvester_failed_total", {"reason": "forbidden"}, "rate"),
        ("harvester_due_jobs", {}, "max"),
        ("up", {"job": "harvester"}, "absent"),
    ]


def test_the_prometheus_example_scrapes_the_job_the_alerts_name() -> None:
    config = load_one(DEPLOY / "prometheus" / "prometheus.yml")
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    for rule in alert_rules():
        for name, labels, _ in selectors(rule["expr"]):
            if "job" in labels:
                assert labels["job"] in jobs, (rule["alert"], name)
    prometheus = compose()["services"]["prometheus"]
    mount = next(v for v in prometheus["volumes"] if v.startswith("./prometheus:"))
    inside = mount.split(":")[1]
    assert [f"{inside}/alerts.yaml"] == config["rule_files"]
    target = config["scrape_configs"][0]["static_configs"][0]["targets"][0]
    assert target == f"daemon:{compose_env('daemon')['HARVESTER_ADMIN_PORT']}"


def test_exported_metric_names_cover_spec_section_6() -> None:
    exported = exported_metrics()
    for name, labels in {
        "harvester_requests_total": {"status_class", "outcome"},
        "harvester_polls_total": set(),
        "harvester_landed_total": set(),
        "harvester_failed_total": {"reason"},
        "harvester_stuck_open": set(),
        "harvester_oldest_stuck_age_seconds": set(),
        "harvester_queue_jobs": {"state"},
        "harvester_due_jobs": set(),
        "harvester_oldest_due_age_seconds": set(),
        "harvester_claim_seconds_bucket": {"le"},
        "harvester_write_seconds_bucket": {"le"},
        "harvester_in_flight_requests": set(),
        "harvester_auth_circuit_open": set(),
        "harvester_paused_until_timestamp_seconds": set(),
        "process_resident_memory_bytes": set(),
    }.items():
        assert name in exported, name
        assert labels <= exported[name], name



async def test_queue_gauges_share_one_read_and_stamp_it_for_the_staleness_alert() -> None:
    """HarvesterQueueMetricsStale relies on the read timestamp; concurrent scrapes must
    not multiply the database reads the cache is there to avoid."""
    reads = 0
    release = asyncio.Event()

    async def read() -> dict[str, float]:
        nonlocal reads
        reads += 1
        await release.wait()
        return {"pending": 7.0, "due": 2.0, "oldest_due_age": 12.5}

    metrics = Metrics()
    gauges = metrics.attach_queue_gauges(read)
    before = Scraped(metrics)
    assert before.value("harvester_queue_gauges_read_timestamp_seconds") == 0
    scrapes = [asyncio.create_task(gauges.refresh()) for _ in range(5)]
    await asyncio.sleep(0)
    release.set()
    await asyncio.gather(*scrapes)
    await gauges.refresh()  # fresh: no new read
    assert reads == 1
    after = Scraped(metrics)
    assert after.value("harvester_queue_jobs", state="pending") == 7
    assert after.value("harvester_due_jobs") == 2
    assert after.value("harvester_oldest_due_age_seconds") == 12.5
    assert after.value("harvester_queue_gauges_read_timestamp_seconds") > 0


class Scraped:
    def __init__(self, metrics: Metrics) -> None:
        self.samples = {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(metrics.render().decode())
            for sample in family.samples}

    def value(self, name: str, **labels: str) -> float:
        return self.samples[(name, frozenset(labels.items()))]
