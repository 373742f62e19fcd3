"""The third-party plugin path end to end: pip-install plugins/millpond-syslog into a fresh
virtual environment, see ``millpond plugins`` list it, and run a pipeline that uses it.

To keep this under a minute, the fresh venv borrows the test venv's third-party
packages (a .pth line) and installs millpond and the plugin with ``--no-deps``;
``MILLPOND_DIST_TEST_FULL=1`` installs every dependency from the index instead.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import textwrap
import time
from pathlib import Path

import pytest

from millpond import __version__, speedups
from tests.servers.common import free_port, wait_for_port

REPO = Path(__file__).resolve().parents[1]
PLUGIN = REPO / "plugins" / "millpond-syslog"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("plugin-venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    python = root / "bin" / "python"
    full = os.environ.get("MILLPOND_DIST_TEST_FULL") == "1"
    if not full:
        purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                 check=True, capture_output=True, text=True).stdout.strip()
        Path(purelib, "_borrowed_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # build from copies: setuptools leaves build/ and *.egg-info beside the sources it builds
    ignore = shutil.ignore_patterns("build", "*.egg-info", "__pycache__", ".*", "*.so")
    main_copy, plugin_copy = root.parent / "millpond", root.parent / "millpond-syslog"
    for name in ("core", "connectors"):
        shutil.copytree(REPO / name, main_copy / name, ignore=ignore)
    for name in ("pyproject.toml", "setup.py", "README.md"):  # setup.py: the C speedups, as in the checkout
        shutil.copy(REPO / name, main_copy / name)
    shutil.copytree(PLUGIN, plugin_copy, ignore=ignore)
    install = [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", str(main_copy)]
    install += [f"{plugin_copy}[test]", "--no-cache-dir"] if full else [str(plugin_copy), "--no-deps"]
    done = subprocess.run(install, capture_output=True, text=True, timeout=540)
    assert done.returncode == 0, done.stdout + done.stderr
    return root


def millpond(venv: Path, *args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(venv / "bin" / "millpond"), *args], capture_output=True, text=True,
                          timeout=120, **kwargs)  # type: ignore[call-overload,no-any-return]


def test_the_install_runs_the_same_speedups_as_the_checkout(venv: Path) -> None:
    assert millpond(venv, "--version").stdout.strip() == f"millpond {__version__} (speedups: {speedups.describe()})"


def test_installed_plugin_is_listed(venv: Path) -> None:
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import millpond_syslog; print(millpond_syslog.__file__)"],
                           capture_output=True, text=True, check=True).stdout
    assert str(venv) in where, "the plugin must come from the fresh venv, not the source tree"
    done = millpond(venv, "plugins")
    assert done.returncode == 0, done.stderr
    row = next(line for line in done.stdout.splitlines() if line.startswith("syslog "))
    assert row.split()[:3] == ["syslog", "millpond-syslog", "0.1.0"]
    assert "source: syslog" in row


def test_plugin_tests_pass_against_the_installed_plugin(venv: Path) -> None:
    done = subprocess.run([str(venv / "bin" / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           str(PLUGIN / "tests")], capture_output=True, text=True, timeout=300, cwd=venv)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def _pipeline(tmp_path: Path, port: int, guarantee: str) -> Path:
    path = tmp_path / "syslog.yaml"
    path.write_text(textwrap.dedent(f"""\
        name: audit-syslog
        log:
          embedded: {{dir: {tmp_path / 'log'}}}
        topics:
          - {{name: audit.syslog, partitions: 2}}
        connectors:
          - name: syslog-in
            kind: source
            type: syslog
            topic: audit.syslog
            guarantee: {guarantee}
            config: {{udp_port: {port}, tcp_port: {port}}}
            transforms:
              - {{type: mask, config: {{fields: [structured_data.auth.user], salt: pepper}}}}
    """))
    return path


def test_guarantee_refused_with_reason(venv: Path, tmp_path: Path) -> None:
    done = millpond(venv, "validate", str(_pipeline(tmp_path, free_port(), "at_least_once")))
    assert done.returncode == 1
    assert "connectors[0].guarantee: connector 'syslog-in' asks for at_least_once" in done.stdout
    assert "at most at_most_once" in done.stdout and "cannot replay" in done.stdout


def test_pipeline_with_the_plugin_writes_syslog_into_the_log(venv: Path, tmp_path: Path) -> None:
    port = free_port()
    pipeline = _pipeline(tmp_path, port, "at_most_once")
    assert millpond(venv, "validate", str(pipeline)).returncode == 0
    worker = subprocess.Popen([str(venv / "bin" / "millpond", ), "run", str(pipeline)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_port(port, 60, worker)  # type: ignore[arg-type]
        sent = [f'<86>1 2024-05-01T12:00:{i:02d}Z host{i % 3} sshd {i} - [auth user="alice{i}"] login {i}'
                for i in range(20)]
        with socket.create_connection(("127.0.0.1", port)) as tcp:
            tcp.sendall("".join(m + "\n" for m in sent[:10]).encode())
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            for message in sent[10:]:
                udp.sendto(message.encode(), ("127.0.0.1", port))
        records: list[dict[str, object]] = []
        deadline = time.monotonic() + 60
        while len(records) < len(sent) and time.monotonic() < deadline:
            time.sleep(0.5)
            done = millpond(venv, "consume", "audit.syslog", "--from-beginning", "-c", str(pipeline))
            assert done.returncode == 0, done.stderr
            records = [json.loads(line) for line in done.stdout.splitlines()]
    finally:
        worker.send_signal(signal.SIGTERM)
        _, err = worker.communicate(timeout=60)
    assert worker.returncode == 0, err[-3000:]
    assert "Traceback" not in err
    values = sorted((r["value"] for r in records), key=lambda v: int(v["procid"]))  # type: ignore[index]
    assert [v["message"] for v in values] == [f"login {i}" for i in range(20)]  # type: ignore[index]
    assert all(len(v["structured_data"]["auth"]["user"]) == 64 for v in values)  # type: ignore[index]
    assert {r["key"] for r in records} == {"host0", "host1", "host2"}
    assert records[0]["timestamp"] >= 1714564800000  # type: ignore[operator]
    # one host's messages stay in one partition
    for host in ("host0", "host1", "host2"):
        assert len({r["partition"] for r in records if r["key"] == host}) == 1
