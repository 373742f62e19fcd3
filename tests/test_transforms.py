"""Built-in transforms: behaviour, config validation, and RecordError on records they cannot handle."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import pytest
from pydantic import ValidationError

from millpond import plugins
from millpond.errors import RecordError
from millpond.records import Record
from millpond.transforms import Drop, Filter, Mask, Rename, Route, Timestamp


def make(cls: Any, **config: Any) -> Any:
    return cls(cls.config_model.model_validate(config))


def one(transform: Any, value: Any, **fields: Any) -> Record:
    (out,) = list(transform.apply(Record(value=value, **fields)))
    return out


def test_registered_under_their_names() -> None:
    for name, cls in {"rename": Rename, "drop": Drop, "filter": Filter, "route": Route,
                      "mask": Mask, "timestamp": Timestamp}.items():
        assert plugins.transform_class(name) is cls


def test_rename_top_level_and_nested_without_touching_input() -> None:
    value = {"a": 1, "user": {"mail": "x@y", "id": 7}}
    out = one(make(Rename, fields={"a": "b", "user.mail": "user.email", "missing": "z"}), value)
    assert out.value == {"b": 1, "user": {"email": "x@y", "id": 7}}
    assert value == {"a": 1, "user": {"mail": "x@y", "id": 7}}


def test_rename_into_new_nested_object() -> None:
    out = one(make(Rename, fields={"ip": "net.ip"}), {"ip": "1.2.3.4"})
    assert out.value == {"net": {"ip": "1.2.3.4"}}


def test_drop_fields_through_lists() -> None:
    value = {"a": 1, "b": 2, "items": [{"sku": 1, "price": 3}, {"sku": 2}]}
    out = one(make(Drop, fields=["b", "items.price", "nope.deeper"]), value)
    assert out.value == {"a": 1, "items": [{"sku": 1}, {"sku": 2}]}
    assert value["items"][0] == {"sku": 1, "price": 3}


@pytest.mark.parametrize(
    "config, value, kept",
    [
        ({"field": "level", "equals": "error"}, {"level": "error"}, True),
        ({"field": "level", "equals": "error"}, {"level": "info"}, False),
        ({"field": "level", "equals": None}, {"level": None}, True),
        ({"field": "level", "in": ["warn", "error"]}, {"level": "warn"}, True),
        ({"field": "level", "in": ["warn", "error"]}, {}, False),
        ({"field": "user.id", "exists": True}, {"user": {"id": 0}}, True),
        ({"field": "user.id", "exists": False}, {"user": {}}, True),
        ({"field": "msg", "regex": "^fail"}, {"msg": "failed login"}, True),
        ({"field": "msg", "regex": "^fail"}, {"msg": "a failed login"}, False),
        ({"field": "code", "regex": "^5"}, {"code": 503}, True),
        ({"regex": "ERROR"}, "2024 ERROR disk full", True),
        ({"field": "level", "equals": "debug", "negate": True}, {"level": "debug"}, False),
        ({"field": "level", "equals": "debug", "negate": True}, {"level": "info"}, True),
    ],
)
def test_filter(config: dict[str, Any], value: Any, kept: bool) -> None:
    out = list(make(Filter, **config).apply(Record(value=value)))
    assert (out != []) == kept


@pytest.mark.parametrize(
    "config",
    [{"field": "a"}, {"field": "a", "equals": 1, "regex": "x"}, {"exists": True}, {"field": "a", "regex": "("},
     {"field": "a..b", "equals": 1}],
)
def test_filter_bad_config(config: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        Filter.config_model.model_validate(config)


def test_filter_on_field_of_non_object_is_record_error() -> None:
    with pytest.raises(RecordError, match="filter: needs a record whose value is a JSON object, got str"):
        list(make(Filter, field="a", equals=1).apply(Record(value="plain line")))


def test_route_by_field_template() -> None:
    route = make(Route, topic="audit.{type}.{actor.kind}", default="audit.other")
    out = one(route, {"type": "login", "actor": {"kind": "user"}}, topic="in", partition=2)
    assert out.topic == "audit.login.user" and out.partition is None
    assert one(route, {"type": "login"}).topic == "audit.other"


def test_route_errors() -> None:
    route = make(Route, topic="audit.{type}")
    with pytest.raises(RecordError, match="no field 'type'"):
        list(route.apply(Record(value={})))
    with pytest.raises(RecordError, match="may only use"):
        list(route.apply(Record(value={"type": "a b"})))
    with pytest.raises(RecordError, match="is a dict"):
        list(route.apply(Record(value={"type": {}})))
    for bad in ("audit.{type", "bad topic.{x}", "a.{}"):
        with pytest.raises(ValidationError):
            Route.config_model.model_validate({"topic": bad})


def test_mask_hash_fixed_nested_and_salted() -> None:
    value = {"email": "a@b.c", "card": {"number": "4111"}, "items": [{"ssn": "1"}, {"ssn": None}]}
    out = one(make(Mask, fields=["email", "card.number", "items.ssn"], salt="k"), value)

    def keyed(data: bytes) -> str:
        return hmac.new(b"k", data, hashlib.sha256).hexdigest()

    assert out.value["email"] == keyed(b"a@b.c")
    assert out.value["card"]["number"] == keyed(b"4111")
    assert out.value["items"] == [{"ssn": keyed(b"1")}, {"ssn": None}]
    assert value["email"] == "a@b.c"
    fixed = one(make(Mask, fields=["email"], mode="fixed", replacement="[pii]"), value)
    assert fixed.value["email"] == "[pii]"


@pytest.mark.parametrize("salt", [None, ""])
def test_mask_hash_refuses_to_run_without_a_salt(salt: str | None) -> None:
    with pytest.raises(ValidationError, match=r"mask needs a salt; set salt: \$\{MASK_SALT\}"):
        Mask.config_model.model_validate({"fields": ["email"], "salt": salt})


@pytest.mark.parametrize(
    "config, field, expected",
    [
        ({"format": "epoch_ms"}, 1700000000123, 1700000000123),
        ({"format": "epoch_ms"}, "1700000000123", 1700000000123),
        ({"format": "epoch_s"}, 1700000000.5, 1700000000500),
        ({"format": "iso8601"}, "2023-11-14T22:13:20.123Z", 1700000000123),
        ({"format": "iso8601"}, "2023-11-14T23:13:20+01:00", 1700000000000),
        ({"format": "iso8601"}, "2023-11-14T22:13:20", 1700000000000),
        ({"format": "iso8601", "timezone": "Europe/Paris"}, "2023-11-14T23:13:20", 1700000000000),
    ],
)
def test_timestamp(config: dict[str, Any], field: Any, expected: int) -> None:
    out = one(make(Timestamp, field="at", **config), {"at": field}, timestamp=5)
    assert out.timestamp == expected


def test_timestamp_errors() -> None:
    ts = make(Timestamp, field="at")
    with pytest.raises(RecordError, match="no field 'at'"):
        list(ts.apply(Record(value={})))
    with pytest.raises(RecordError, match="'at' .*'yesterday'.* is not iso8601"):
        list(ts.apply(Record(value={"at": "yesterday"})))
    with pytest.raises(RecordError, match="not epoch_ms"):
        list(make(Timestamp, field="at", format="epoch_ms").apply(Record(value={"at": True})))
    lenient = make(Timestamp, field="at", required=False)
    assert one(lenient, {}, timestamp=9).timestamp == 9
    with pytest.raises(ValidationError, match="unknown time zone"):
        Timestamp.config_model.model_validate({"field": "at", "timezone": "Mars/Olympus"})


@pytest.mark.parametrize("cls", [Rename, Drop, Route, Mask, Timestamp])
def test_non_object_values_raise_record_error(cls: Any) -> None:
    config = {Rename: {"fields": {"a": "b"}}, Drop: {"fields": ["a"]}, Route: {"topic": "t.{a}"},
              Mask: {"fields": ["a"], "salt": "k"}, Timestamp: {"field": "a"}}[cls]
    with pytest.raises(RecordError, match="needs a record whose value is a JSON object, got bytes"):
        list(make(cls, **config).apply(Record(value=b"raw")))
