"""Pipeline YAML: loading, every problem with its path and line, ${VAR}, guarantees."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from millpond import plugins
from millpond.config import (
    ConfigProblem,
    PipelineFileError,
    check_guarantees,
    check_topic_name,
    format_path,
    load_pipeline,
    parse_pipeline,
    topic_name_problem,
    validate_file,
)
from millpond.connector import ConnectorConfig, Guarantee, Sink, Source, SourceBatch
from millpond.errors import DeliveryGuaranteeError, InvalidTopicError
from millpond.hookspecs import hookimpl


class DirConfig(ConnectorConfig):
    dir: str
    batch: int = 100


class DemoSource(Source):
    guarantee: ClassVar[Guarantee] = Guarantee.at_least_once
    config_model: ClassVar[type[ConnectorConfig]] = DirConfig

    async def start(self, offset: Any | None) -> None: ...

    async def poll(self) -> SourceBatch | None:
        return None


class DemoSink(Sink):
    guarantee: ClassVar[Guarantee] = Guarantee.exactly_once
    config_model: ClassVar[type[ConnectorConfig]] = DirConfig

    async def write(self, records: list[Any]) -> None: ...

    async def flush(self, offsets: Any) -> None: ...


class DemoPlugin:
    @hookimpl
    def millpond_sources(self) -> dict[str, type[Source]]:
        return {"demo": DemoSource}

    @hookimpl
    def millpond_sinks(self) -> dict[str, type[Sink]]:
        return {"demo": DemoSink}


@pytest.fixture(autouse=True)
def demo_plugin() -> Iterator[None]:
    pm = plugins.plugin_manager()
    plugin = DemoPlugin()
    pm.register(plugin, name="test-demo")
    yield
    pm.unregister(plugin)


GOOD = """\
name: demo
log:
  embedded:
    dir: /tmp/millpond-test
topics:
  - name: lines
    partitions: 3
    config: {retention.ms: 1000}
connectors:
  - name: tail
    kind: source
    type: demo
    topic: lines
    config:
      dir: ./in
    transforms:
      - type: mask
        config: {fields: [email], salt: pepper}
  - name: out
    kind: sink
    type: demo
    topics: [lines]
    config:
      dir: ./out
      batch: 5
    guarantee: exactly_once
"""


def problems(text: str, env: dict[str, str] | None = None) -> list[ConfigProblem]:
    return parse_pipeline(textwrap.dedent(text), env=env or {})[1]


def test_good_pipeline_loads(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(GOOD)
    config = load_pipeline(path)
    assert config.name == "demo"
    assert config.topics[0].config == {"retention.ms": 1000}
    assert config.connectors[1].guarantee is Guarantee.exactly_once
    assert validate_file(path) == []


def test_invalid_yaml_names_line_and_column() -> None:
    found = problems("log:\n  embedded: {dir: x\nconnectors: []\n")
    assert len(found) == 1
    assert found[0].line == 3
    assert "invalid YAML" in found[0].message and "column" in found[0].message


def test_not_a_mapping() -> None:
    found = problems("- just\n- a list\n")
    assert "must be a mapping" in found[0].message


def test_unknown_connector_type_names_path_line_and_choices() -> None:
    text = GOOD.replace("type: demo\n    topic: lines", "type: nosuch\n    topic: lines")
    (p,) = problems(text)
    assert p.path == "connectors[0].type"
    assert p.line == 12
    assert "unknown source type 'nosuch'" in p.message and "demo" in p.message


def test_wrong_field_types_each_reported_with_its_line() -> None:
    text = GOOD.replace("partitions: 3", "partitions: many").replace("batch: 5", "batch: lots")
    found = problems(text)
    by_path = {p.path: p for p in found}
    assert by_path["topics[0].partitions"].line == 7
    assert "valid integer" in by_path["topics[0].partitions"].message
    # the connector's own config model, reported under connectors[i].config
    assert by_path["connectors[1].config.batch"].line == 25
    assert len(found) == 2


def test_missing_and_extra_fields() -> None:
    text = GOOD.replace("      dir: ./in\n", "      dri: ./in\n")
    found = {p.path: p for p in problems(text)}
    assert found["connectors[0].config.dir"].message == "Field required"
    assert found["connectors[0].config.dir"].line == 14  # the config: key
    assert found["connectors[0].config.dri"].message == "unknown key 'dri' (known: batch, dir)"
    assert found["connectors[0].config.dri"].line == 15


def test_model_level_errors_point_at_their_mapping() -> None:
    text = GOOD.replace("    topic: lines\n    config:\n      dir: ./in", "    config:\n      dir: ./in")
    (p,) = problems(text)
    assert p.path == "connectors[0]" and p.line == 10
    assert "a source needs 'topic'" in p.message


def test_unresolved_variable_names_variable_path_and_line() -> None:
    text = GOOD.replace("dir: ./out", "dir: ${OUT_DIR}")
    (p,) = problems(text)
    assert p.path == "connectors[1].config.dir"
    assert p.line == 24
    assert "OUT_DIR" in p.message and "not set" in p.message


def test_interpolation_default_escape_and_typing() -> None:
    text = GOOD.replace("partitions: 3", "partitions: ${PARTS}").replace(
        "dir: ./out", "dir: \"${OUT:-/srv/out}/$${literal}\""
    )
    config, found = parse_pipeline(text, env={"PARTS": "7"})
    assert found == [] and config is not None
    assert config.topics[0].partitions == 7
    assert config.connectors[1].config["dir"] == "/srv/out/${literal}"


def test_secrets_never_appear_in_messages_and_are_redacted() -> None:
    secret = "hunter2-very-secret"
    text = GOOD.replace("partitions: 3", "partitions: ${PW}").replace("dir: ./in", "dir: ${PW}")
    found = problems(text, env={"PW": secret})
    assert found, "a string is not a partition count"
    assert all(secret not in str(p) for p in found)
    ok = GOOD.replace("dir: ./in", "dir: ${PW}")
    config, _ = parse_pipeline(ok, env={"PW": secret})
    assert config is not None and config.connectors[0].config["dir"] == secret
    assert secret not in repr(config.redacted())
    assert config.redacted()["connectors"][0]["config"]["dir"] == "***"


def test_bad_variable_reference() -> None:
    (p,) = problems(GOOD.replace("dir: ./in", "dir: ${not valid}"))
    assert "bad variable reference" in p.message and p.path == "connectors[0].config.dir"


def test_topic_names_like_kafka() -> None:
    assert topic_name_problem("audit.events_v1-x") is None
    for bad in ("", ".", "..", "a" * 250, "with space", "slash/es", "ümlaut"):
        assert topic_name_problem(bad), bad
    with pytest.raises(InvalidTopicError):
        check_topic_name("a b")
    found = problems(GOOD.replace("topics: [lines]", "topics: [\"li nes\"]"))
    assert {p.path for p in found} == {"connectors[1].topics[0]"}
    assert any("may only use ASCII letters" in p.message for p in found)


def test_duplicate_keys_and_names() -> None:
    found = problems(GOOD.replace("    partitions: 3\n", "    partitions: 3\n    partitions: 4\n"))
    assert any("duplicate key 'partitions'" in p.message and p.line == 8 for p in found)
    twice = GOOD.replace("name: out", "name: tail")
    assert any(p.path == "connectors[1].name" and "used twice" in p.message for p in problems(twice))


def test_guarantee_asked_beyond_what_connector_gives() -> None:
    text = GOOD.replace("      dir: ./in\n", "      dir: ./in\n    guarantee: exactly_once\n")
    (p,) = problems(text)
    assert p.path == "connectors[0].guarantee"
    assert "'tail'" in p.message and "exactly_once" in p.message and "at_least_once" in p.message
    config, _ = parse_pipeline(GOOD, env={})
    assert config is not None
    config.connectors[0].guarantee = Guarantee.exactly_once
    with pytest.raises(DeliveryGuaranteeError, match="'tail' asks for exactly_once.*at most at_least_once"):
        check_guarantees(config)


def test_unknown_guarantee_name() -> None:
    (p,) = problems(GOOD.replace("guarantee: exactly_once", "guarantee: always"))
    assert p.path == "connectors[1].guarantee" and "at_most_once" in p.message


def test_transform_config_checked_against_its_model() -> None:
    found = problems(GOOD.replace("config: {fields: [email], salt: pepper}", "config: {fields: email, bogus: 1, salt: p}"))
    paths = {p.path for p in found}
    assert paths == {"connectors[0].transforms[0].config.fields", "connectors[0].transforms[0].config.bogus"}
    assert all(p.line == 18 for p in found)
    (p,) = problems(GOOD.replace("type: mask", "type: unmask"))
    assert p.path == "connectors[0].transforms[0].type" and "rename" in p.message


def test_unknown_converter() -> None:
    text = GOOD.replace("    topic: lines\n", "    topic: lines\n    converter: {value: xml}\n")
    (p,) = problems(text)
    assert p.path == "connectors[0].converter.value" and "unknown converter type 'xml'" in p.message


def test_every_problem_reported_at_once(tmp_path: Path) -> None:
    text = (
        GOOD.replace("partitions: 3", "partitions: -1")
        .replace("type: demo\n    topic: lines", "type: zzz\n    topic: lines")
        .replace("dir: ./out", "dir: ${NOPE}")
    )
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    found = validate_file(path)
    assert [p.path for p in found] == ["topics[0].partitions", "connectors[0].type", "connectors[1].config.dir"]
    with pytest.raises(PipelineFileError) as info:
        load_pipeline(path)
    assert str(info.value).splitlines()[0] == f"{path}: 3 problems"
    assert len(str(info.value).splitlines()) == 4
    assert found[0].format("bad.yaml").startswith("bad.yaml:7: topics[0].partitions: ")


def test_missing_file(tmp_path: Path) -> None:
    (p,) = validate_file(tmp_path / "nope.yaml")
    assert "cannot read" in p.message


def test_format_path() -> None:
    assert format_path(("connectors", 1, "config", "dir")) == "connectors[1].config.dir"
    assert format_path(("topics", 0, "config", "retention.ms")) == 'topics[0].config["retention.ms"]'
    assert format_path(()) == ""


def test_topic_settings_checked_field_by_field() -> None:
    text = GOOD.replace("config: {retention.ms: 1000}",
                        "config:\n      retention.ms: forever\n      compression: zstd\n      colour: blue")
    found = {p.path: p for p in problems(text)}
    assert set(found) == {'topics[0].config["retention.ms"]', "topics[0].config.colour"}
    assert found['topics[0].config["retention.ms"]'].line == 9
    assert found["topics[0].config.colour"].line == 11
    assert "unknown key 'colour' (known: audit.chain, cleanup.policy, compression.type," in found["topics[0].config.colour"].message


def test_undeclared_topics_fail_validate_not_only_run() -> None:
    (p,) = problems(GOOD.replace("topics: [lines]", "topics: [lines, ghost]"))
    assert p.path == "connectors[1].topics[1]" and p.line == 22
    assert p.message == ("sink 'out' reads topic 'ghost', which is neither declared under 'topics:' nor written "
                         "by a source or a dead-letter policy of this pipeline")
    (p,) = problems(GOOD.replace("    topic: lines\n", "    topic: elsewhere\n"))
    assert p.path == "connectors[0].topic" and "source 'tail' writes topic 'elsewhere'" in p.message
    # a dead-letter topic is created by the run, so a sink may read it
    dlq = GOOD.replace("    topic: lines\n", "    topic: lines\n    errors: {policy: dead_letter, topic: bad}\n")
    assert problems(dlq.replace("topics: [lines]", "topics: [lines, bad]")) == []


def test_validate_reports_every_problem_at_once() -> None:
    text = (GOOD.replace("config: {retention.ms: 1000}", "config: {retention.ms: forever}")
            .replace("partitions: 3", "partitions: many")
            .replace("topics: [lines]", "topics: [lines, ghost]")
            .replace("guarantee: exactly_once", "guarantee: always"))
    paths = {p.path for p in problems(text)}
    assert paths == {"topics[0].partitions", 'topics[0].config["retention.ms"]', "connectors[1].topics[1]",
                     "connectors[1].guarantee"}


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=40))
def test_env_values_never_leak_into_messages(tail: str) -> None:
    secret = "zq" + tail  # a prefix no message or default happens to contain
    # used where it is likely invalid (a topic name), and where it is echoed back (a quoted string)
    text = GOOD.replace("- name: lines\n", "- name: \"${SECRET}\"\n").replace("dir: ./in", "dir: '${SECRET}'")
    config, found = parse_pipeline(text, env={"SECRET": secret})
    for problem in found:
        assert secret not in problem.message
    if config is not None:
        assert config.connectors[0].config["dir"] == secret
        assert secret not in json.dumps(config.redacted())


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_shipped_pipelines_validate(path: Path) -> None:
    assert [p.format(path.name) for p in validate_file(path)] == []


def test_mask_without_salt_is_refused_at_validate_naming_connector_and_transform() -> None:
    (p,) = problems(GOOD.replace("config: {fields: [email], salt: pepper}", "config: {fields: [email]}"))
    assert p.path == "connectors[0].transforms[0].config"
    assert p.message == "connector 'tail', transform mask: mask needs a salt; set salt: ${MASK_SALT}"
    # from the environment it is fine, and the fixed mode needs none
    assert problems(GOOD.replace("salt: pepper", 'salt: "${MASK_SALT}"'), env={"MASK_SALT": "s3cret-salt"}) == []
    assert problems(GOOD.replace("salt: pepper", "mode: fixed")) == []
