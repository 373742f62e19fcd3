"""docker/ checked without Docker (there is no engine here): what can go wrong in a
compose file or Dockerfile before an image is pulled.

The compose file is read against the pipelines it starts: every variable a
pipeline reads is set for the service that runs it (and nothing else is),
every server it uses is a service it waits for (and no other). The Dockerfile
is read for what the build needs (setup.py, the C sources, plugins/), a
compiler only in the builder stage, a non-root user and a healthcheck."""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"
#: A tag that names a release (digits and dots), not a moving one like ``latest`` or ``16``.
PINNED = re.compile(r"^[a-z0-9./_-]+:\d+\.\d+(\.\d+)?$")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    assert isinstance(data, dict)
    return data


def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]  # type: ignore[no-any-return]


def as_args(command: str | list[str]) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else [str(c) for c in command]


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", (DOCKER / "Dockerfile").read_text())
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1] if " " in ln else "") for ln in lines]


SERVERS = {"postgres", "cassandra", "kafka"}
#: ``${NAME}`` / ``${NAME:-default}`` as the pipeline loader expands them
VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-[^}]*)?\}")


def test_compose_has_the_servers_and_a_service_per_pipeline(compose: dict[str, Any]) -> None:
    assert SERVERS <= set(services(compose))
    assert {"millpond", "postgres-cdc", "cassandra-sink"} <= set(services(compose))


@pytest.mark.parametrize(
    ("service", "repository", "major"),
    [("postgres", "postgres", "16."), ("cassandra", "cassandra", "5.0."), ("kafka", "apache/kafka", "4.")],
)
def test_server_images_are_pinned_releases(
    compose: dict[str, Any], service: str, repository: str, major: str
) -> None:
    image = services(compose)[service]["image"]
    assert PINNED.match(image), f"{service}: image {image!r} is not pinned to a release"
    name, tag = image.rsplit(":", 1)
    assert name == repository
    assert tag.startswith(major), f"{service}: {image!r} is not the {major}x line"


def test_postgres_runs_with_logical_decoding(compose: dict[str, Any]) -> None:
    pg = services(compose)["postgres"]
    args = as_args(pg["command"])
    settings = dict(args[i + 1].split("=", 1) for i, a in enumerate(args) if a == "-c")
    assert args[0] == "postgres"
    assert settings["wal_level"] == "logical"
    assert int(settings["max_replication_slots"]) >= 1
    assert int(settings["max_wal_senders"]) >= 1
    # Replication connections from other containers need their own pg_hba.conf line.
    init = DOCKER / "postgres-init" / "10-replication.sh"
    assert "./postgres-init:/docker-entrypoint-initdb.d:ro" in pg["volumes"]
    assert re.search(r"^echo \"host replication all all \S+\" >> ", init.read_text(), re.M)


def test_kafka_is_one_kraft_node_with_single_replica_internal_topics(compose: dict[str, Any]) -> None:
    env = {k: str(v) for k, v in services(compose)["kafka"]["environment"].items()}
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"].startswith(env["KAFKA_NODE_ID"] + "@")
    listeners = {entry.split("://")[0] for entry in env["KAFKA_LISTENERS"].split(",")}
    assert listeners == set(dict(p.split(":") for p in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(",")))
    assert env["KAFKA_CONTROLLER_LISTENER_NAMES"] in listeners
    for key in ("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
                "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"):
        assert env[key] == "1", key
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}", env["CLUSTER_ID"])


def test_published_ports_are_on_loopback(compose: dict[str, Any]) -> None:
    for name, service in services(compose).items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"


def test_every_mounted_path_exists_and_named_volumes_are_declared(compose: dict[str, Any]) -> None:
    declared = set(compose.get("volumes") or {})
    for name, service in services(compose).items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith((".", "/")):
                assert (DOCKER / source).resolve().exists(), f"{name} mounts missing {source}"
            else:
                assert source in declared, f"{name} uses undeclared volume {source}"


def host_path(service: dict[str, Any], container_path: PurePosixPath) -> Path | None:
    """Where a path inside the container comes from on the host, if a bind mount provides it."""
    volumes: list[str] = service.get("volumes", [])
    for volume in volumes:
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")) and container_path.is_relative_to(target):
            return (DOCKER / source / container_path.relative_to(target)).resolve()
    return None


def pipeline_services(compose: dict[str, Any]) -> dict[str, tuple[dict[str, Any], Path]]:
    """Each service that runs a pipeline, with the host file of that pipeline."""
    found = {}
    for name, svc in services(compose).items():
        if "build" in svc:
            args = as_args(svc["command"])
            assert args[0] == "run", f"{name}: a millpond service runs a pipeline"
            pipeline = host_path(svc, PurePosixPath(svc["working_dir"]) / args[1])
            assert pipeline is not None and pipeline.is_file(), f"{name}: {args[1]} is not mounted from configs/"
            found[name] = (svc, pipeline)
    return found


def servers_used(pipeline: Path) -> set[str]:
    """The servers a pipeline talks to: its connectors' types and its log backend."""
    data = yaml.safe_load(pipeline.read_text())
    used = {"kafka"} if "kafka" in (data.get("log") or {}) else set()
    for connector in data["connectors"]:
        kind = str(connector["type"]).split("-")[0]
        if kind in SERVERS:
            used.add(kind)
    return used


def test_millpond_service_runs_the_quickstart_from_configs(compose: dict[str, Any]) -> None:
    svc = services(compose)["millpond"]
    context = (DOCKER / svc["build"]["context"]).resolve()
    assert context == REPO
    assert (context / svc["build"]["dockerfile"]).is_file()
    args = as_args(svc["command"])
    assert args[:2] == ["run", "configs/quickstart.yaml"]
    # The quickstart's paths are relative to the repository root, which the working directory mirrors.
    workdir = PurePosixPath(svc["working_dir"])
    pipeline = host_path(svc, workdir / args[1])
    assert pipeline == REPO / "configs" / "quickstart.yaml" and pipeline.is_file()
    sources = yaml.safe_load(pipeline.read_text())["connectors"]
    for path in (c["config"]["path"] for c in sources if c["type"] == "file" and c["kind"] == "source"):
        directory = PurePosixPath(path).parent
        assert host_path(svc, workdir / directory) == (REPO / directory).resolve(), path
    for writable in ("data", "out"):  # the log and the file sink's output live on volumes
        assert f"millpond-{writable}:{workdir / writable}" in svc["volumes"]
    assert "profiles" not in svc, "`docker compose up` alone runs the quickstart"


def test_every_variable_a_pipeline_reads_is_set_for_the_service_that_runs_it(compose: dict[str, Any]) -> None:
    runs = {pipeline for _, pipeline in pipeline_services(compose).values()}
    for config in sorted((REPO / "configs").glob("*.yaml")):
        if VARIABLE.search(config.read_text()):
            assert config in runs, f"{config.name} reads variables but no compose service runs it"
    for name, (svc, pipeline) in pipeline_services(compose).items():
        reads = set(VARIABLE.findall(pipeline.read_text()))
        env = set(svc.get("environment") or {})
        assert reads <= env, f"{name} runs {pipeline.name}, which reads {sorted(reads - env)}; compose sets {sorted(env)}"
        # one name for each thing: nothing set that the pipeline does not read
        assert env <= reads, f"{name} sets {sorted(env - reads)}, which {pipeline.name} never reads"


def test_every_server_a_pipeline_uses_is_a_service_it_waits_for_and_no_other(compose: dict[str, Any]) -> None:
    for name, (svc, pipeline) in pipeline_services(compose).items():
        used = servers_used(pipeline)
        waits = set(svc.get("depends_on") or {})
        assert waits == used, f"{name} runs {pipeline.name}, which uses {sorted(used)}; it waits for {sorted(waits)}"
        for server in used:
            assert svc["depends_on"][server] == {"condition": "service_healthy"}
            assert "healthcheck" in services(compose)[server], f"{server} has no healthcheck to wait for"
            # started together: a profile that starts the pipeline starts its servers
            assert set(svc.get("profiles", [])) <= set(services(compose)[server].get("profiles", [])), name
    expected = {"quickstart.yaml": set(), "postgres-cdc.yaml": {"postgres"}, "cassandra-sink.yaml": {"cassandra"}}
    for file, used in expected.items():  # the derivation above, checked once by hand
        assert servers_used(REPO / "configs" / file) == used


def test_addresses_name_the_servers_inside_the_network(compose: dict[str, Any]) -> None:
    svcs = services(compose)
    assert svcs["postgres-cdc"]["environment"]["PG_DSN"].endswith("@postgres:5432/millpond")
    assert "${POSTGRES_PASSWORD:-millpond}" in svcs["postgres-cdc"]["environment"]["PG_DSN"]
    assert svcs["postgres"]["environment"]["POSTGRES_PASSWORD"] == "${POSTGRES_PASSWORD:-millpond}"
    assert svcs["cassandra-sink"]["environment"]["CASSANDRA_HOST"] == "cassandra"
    assert str(svcs["cassandra-sink"]["environment"]["CASSANDRA_PORT"]) == "9042"
    assert "PLAINTEXT://kafka:9092" in svcs["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    # the demo tables postgres-cdc.yaml streams are created with the database
    init = (DOCKER / "postgres-init" / "20-shop.sql").read_text()
    tables = yaml.safe_load((REPO / "configs" / "postgres-cdc.yaml").read_text())["connectors"][0]["config"]["tables"]
    for table in tables:
        assert f"CREATE TABLE {VARIABLE.sub('public', table)} (" in init, table


def stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile's instructions split at each FROM."""
    found: list[list[tuple[str, str]]] = []
    for op, args in dockerfile_instructions():
        if op == "FROM":
            found.append([])
        found[-1].append((op, args))
    return found


def test_dockerfile_compiles_in_a_builder_and_runs_slim_without_root() -> None:
    builder, runtime = stages()
    assert builder[0] == ("FROM", "python:3.11-slim AS builder")
    builder_runs = " ".join(args for op, args in builder if op == "RUN")
    assert re.search(r"apt-get install [^&]*\bgcc\b", builder_runs), "the builder needs a C compiler"
    assert "--only-binary=aiokafka" in builder_runs
    assert re.search(r'pip wheel [^&]*"\.\[all\]"', builder_runs), "every connector's driver"
    # the build fails if the speedups did not compile, instead of shipping the slow paths
    assert 'millpond --version | grep -F "(speedups: columns=C, pgoutput=C, jsonlines=C)"' in builder_runs

    assert runtime[0] == ("FROM", "python:3.11-slim")
    runtime_runs = " ".join(args for op, args in runtime if op == "RUN")
    assert "gcc" not in runtime_runs and "apt-get" not in runtime_runs
    assert "--no-index --find-links /wheels" in runtime_runs and "from=builder" in runtime_runs
    users = [args for op, args in runtime if op == "USER"]
    assert users and users[-1] not in ("root", "0"), "the image must not run as root"
    user = users[-1]
    assert re.search(rf"useradd [^&]*\b{user}\b", runtime_runs)
    # the user owns the venv (plugins can be pip-installed) and the folders compose mounts volumes on
    assert "chown -R millpond:millpond /opt/millpond /app" in runtime_runs and "/app/data /app/out" in runtime_runs
    assert ("ENTRYPOINT", '["millpond"]') in runtime
    assert ("WORKDIR", "/app") in runtime


def test_dockerfile_copies_everything_the_build_needs() -> None:
    steps = dockerfile_instructions()
    copies = [args.split() for op, args in steps if op == "COPY"]
    copied: set[str] = set()
    for args in copies:
        sources = [a for a in args[:-1] if not a.startswith("--")]
        for source in sources:  # every source is in the build context (the repository root)
            assert (REPO / source).exists(), f"COPY {source}: not in the repository"
        copied.update(sources)
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert project["project"]["scripts"]["millpond"] == "millpond.cli:main"
    assert set(project["tool"]["setuptools"]["package-dir"].values()) <= copied
    assert {"pyproject.toml", "setup.py", project["project"]["readme"], "plugins"} <= copied
    # the C sources setup.py compiles are inside the copied folders, and .dockerignore keeps them
    setup = (REPO / "setup.py").read_text()
    c_sources = re.findall(r'"([\w/]+\.c)"', setup)
    assert c_sources and all((REPO / c).is_file() and c.split("/")[0] in copied for c in c_sources)
    ignored = [ln.strip() for ln in (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()
               if ln.strip() and not ln.startswith("#")]
    for needed in [*copied, *c_sources, "plugins/millpond-syslog/pyproject.toml"]:
        for pattern in ignored:
            assert not dockerignored(needed, pattern), f".dockerignore {pattern!r} drops {needed}"
    for dropped in ("build", "core/log/_columns.cpython-311-x86_64-linux-gnu.so", "plugins/x/y.egg-info/PKG-INFO"):
        assert any(dockerignored(dropped, pattern) for pattern in ignored), dropped


def dockerignored(path: str, pattern: str) -> bool:
    """Whether a .dockerignore pattern drops ``path`` (it, or a folder it is in, matches)."""
    regex = "".join(".*" if part == "**" else re.escape(part).replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
                    for part in re.split(r"(\*\*)", pattern))
    parts = path.split("/")
    return any(re.fullmatch(regex.replace(".*/", "(.*/)?"), "/".join(parts[:i])) for i in range(1, len(parts) + 1))


def test_healthcheck_asks_the_worker_api_without_curl() -> None:
    (check,) = [args for op, args in stages()[-1] if op == "HEALTHCHECK"]
    options, _, command = check.partition("CMD")
    assert "--interval=" in options and "--timeout=" in options
    argv = json.loads(command)
    assert argv[:2] == ["python", "-c"] and "curl" not in command
    assert "urllib.request.urlopen('http://127.0.0.1:8083/health'" in argv[2]
    compile(argv[2], "<healthcheck>", "exec")  # the one-liner is valid Python
