"""docker/ checked without Docker (there is no engine here): what can go wrong in a
compose file or Dockerfile before an image is pulled."""

from __future__ import annotations

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


def test_compose_has_the_four_services(compose: dict[str, Any]) -> None:
    assert set(services(compose)) == {"postgres", "cassandra", "kafka", "millpond"}


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

    assert set(svc["depends_on"]) == {"postgres", "cassandra", "kafka"}
    for server, condition in svc["depends_on"].items():
        assert condition == {"condition": "service_healthy"}
        assert "healthcheck" in services(compose)[server], f"{server} has no healthcheck to wait for"
    env = svc["environment"]
    assert env["MILLPOND_KAFKA"] == "kafka:9092"  # the PLAINTEXT listener containers are told to use
    assert "PLAINTEXT://kafka:9092" in services(compose)["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    assert env["MILLPOND_PG_DSN"].endswith("@postgres:5432/millpond")
    assert env["MILLPOND_CASSANDRA"] == "cassandra:9042"


def test_dockerfile_installs_millpond_with_every_extra() -> None:
    steps = dockerfile_instructions()
    assert steps[0] == ("FROM", "python:3.11-slim")
    runs = " ".join(args for op, args in steps if op == "RUN")
    assert re.search(r"pip install [^&]*\"?\.\[all\]\"?", runs)
    for op, args in steps:
        if op == "COPY":  # every source is in the build context (the repository root)
            for source in args.split()[:-1]:
                assert (REPO / source).exists(), f"COPY {source}: not in the repository"
    assert ("ENTRYPOINT", '["millpond"]') in steps
    # The entry point is the console script the package itself declares, from the folders copied.
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert project["project"]["scripts"]["millpond"] == "millpond.cli:main"
    copied = {args.split()[0] for op, args in steps if op == "COPY"}
    assert set(project["tool"]["setuptools"]["package-dir"].values()) <= copied
    assert project["project"]["readme"] in " ".join(args for op, args in steps if op == "COPY")
