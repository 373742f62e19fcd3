"""The shipped example pipeline validates once the plugin is installed."""

from __future__ import annotations

from pathlib import Path

from millpond.config import load_pipeline, validate_file

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "audit-syslog.yaml"


def test_example_validates() -> None:
    assert validate_file(EXAMPLE) == []
    config = load_pipeline(EXAMPLE)
    (spec,) = config.connectors
    assert spec.type == "syslog" and spec.config["udp_port"] == 5514
