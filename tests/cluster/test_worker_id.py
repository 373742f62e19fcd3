"""A worker's id: ``--worker-id``, else ``worker: {id: ...}``, else ``host:pid``; checked before anything runs."""

from __future__ import annotations

import os
import socket

import pytest

from millpond.errors import ConfigError
from millpond.runtime import RuntimeOptions, run_pipeline
from millpond.runtime.settings import WorkerSettings
from millpond.runtime.worker import worker_id
from tests.runtime.test_worker import pipeline


def test_the_command_line_wins_then_the_file_then_host_and_pid() -> None:
    assert worker_id(RuntimeOptions(worker_id="cli-1"), WorkerSettings(id="file-1")) == "cli-1"
    assert worker_id(RuntimeOptions(), WorkerSettings(id="file-1")) == "file-1"
    assert worker_id(RuntimeOptions(), WorkerSettings()) == f"{socket.gethostname()}:{os.getpid()}"


def test_an_id_kafka_cannot_carry_is_refused_before_the_log_is_opened() -> None:
    with pytest.raises(ValueError, match="id"):
        WorkerSettings(id="has space")
    with pytest.raises(ConfigError, match=r"--worker-id 'a/b': use letters, digits"):
        run_pipeline(pipeline([1]), api="off", worker_id="a/b")
