"""pgoutput decoding, on messages captured from a real PostgreSQL 15 server.

``data/pgoutput_capture.json`` holds the rows of one
``pg_logical_slot_peek_binary_changes(..., 'proto_version', '1', ...)`` call
after this workload (table ``t`` has REPLICA IDENTITY DEFAULT and a column
``big_text`` with STORAGE EXTERNAL; table ``k`` has REPLICA IDENTITY FULL)::

    INSERT INTO t VALUES (1, 12.50, 'hé "q"', true, '{"a": [1, 2.5, null]}', ...)
    UPDATE t SET s = 'new' WHERE id = 1          -- big_text unchanged: 'u'
    UPDATE t SET id = 2 WHERE id = 1             -- key change: old key 'K'
    DELETE FROM t WHERE id = 2
    INSERT INTO k ...; UPDATE k ...; DELETE FROM k   -- one transaction, old rows 'O'
    INSERT INTO t (id) VALUES (5)                -- NULLs: 'n'
    TRUNCATE t, k
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from millpond.connectors.postgres import pgoutput as p

CAPTURE = json.loads((Path(__file__).parent / "data" / "pgoutput_capture.json").read_text())
MESSAGES = [p.decode(bytes.fromhex(row["hex"])) for row in CAPTURE]


def test_message_kinds_follow_the_transactions() -> None:
    kinds = "".join(bytes.fromhex(row["hex"])[:1].decode() for row in CAPTURE)
    assert kinds == "BYYRIC" "BUC" "BUC" "BDC" "BRIUDC" "BIC" "BYYRRTC"
    assert [type(m).__name__ for m in MESSAGES[:6]] == [
        "Begin", "Type", "Type", "Relation", "Insert", "Commit"
    ]


def test_begin_and_commit_carry_lsns_xid_and_time() -> None:
    begin, commit = MESSAGES[0], MESSAGES[5]
    assert isinstance(begin, p.Begin) and isinstance(commit, p.Commit)
    assert begin.xid == int(CAPTURE[0]["xid"])
    assert begin.final_lsn == commit.commit_lsn
    assert commit.end_lsn > commit.commit_lsn
    assert commit.commit_ts == begin.commit_ts
    # captured on 2026-11-25: the µs-since-2000 clock converts to that day
    assert p.pg_time_to_unix_ms(commit.commit_ts) // 86_400_000 == 20_782
    # each transaction's begin LSN is after the previous commit
    commits = [m for m in MESSAGES if isinstance(m, p.Commit)]
    assert [c.end_lsn for c in commits] == sorted(c.end_lsn for c in commits)


def test_relation_lists_columns_with_types_and_key_flags() -> None:
    rel = MESSAGES[3]
    assert isinstance(rel, p.Relation)
    assert (rel.namespace, rel.name, rel.replica_identity) == ("public", "t", "d")
    names = [c.name for c in rel.columns]
    assert names == ["id", "n", "s", "b", "j", "ts", "tz", "d", "u", "by", "a", "m", "ma", "f",
                     "big", "big_text"]
    assert [c.name for c in rel.columns if c.is_key] == ["id"]
    types = {c.name: c.type_oid for c in rel.columns}
    assert types["id"] == 23 and types["n"] == 1700 and types["j"] == 3802
    assert types["a"] == 1007 and types["u"] == 2950
    assert rel.columns[1].typmod == (10 << 16 | 2) + 4  # numeric(10,2)
    full = next(m for m in MESSAGES if isinstance(m, p.Relation) and m.name == "k")
    assert full.replica_identity == "f"


def test_type_messages_name_the_enum_and_its_array() -> None:
    enum, array = MESSAGES[1], MESSAGES[2]
    assert isinstance(enum, p.Type) and isinstance(array, p.Type)
    assert (enum.namespace, enum.name) == ("public", "mood")
    assert array.name == "_mood"
    rel = MESSAGES[3]
    assert isinstance(rel, p.Relation)
    assert {c.name: c.type_oid for c in rel.columns}["m"] == enum.oid


def test_insert_tuple_holds_text_values() -> None:
    ins = MESSAGES[4]
    assert isinstance(ins, p.Insert)
    assert ins.new[:4] == (b"1", b"12.50", 'hé "q"'.encode(), b"t")
    assert ins.new[9] == b"\\x0102ff"
    assert ins.new[10] == b"{1,NULL,3}"
    assert ins.new[15] == b"x" * 3000


def test_update_with_unchanged_toast_column() -> None:
    upd = MESSAGES[7]
    assert isinstance(upd, p.Update)
    assert upd.old is None and upd.old_kind is None
    assert upd.new[2] == b"new"
    assert upd.new[15] is p.UNCHANGED_TOAST


def test_update_of_the_key_sends_the_old_key() -> None:
    upd = MESSAGES[10]
    assert isinstance(upd, p.Update)
    assert upd.old_kind == "K"
    assert upd.old is not None and upd.old[0] == b"1" and set(upd.old[1:]) == {None}
    assert upd.new[0] == b"2"


def test_delete_with_default_and_full_identity() -> None:
    dele = MESSAGES[13]
    assert isinstance(dele, p.Delete)
    assert dele.old_kind == "K" and dele.old[0] == b"2"
    full = [m for m in MESSAGES[16:21]]
    upd = next(m for m in full if isinstance(m, p.Update))
    assert upd.old_kind == "O" and upd.old == (b"1", b"x", b"v1") and upd.new == (b"1", b"x", b"v2")
    dfull = next(m for m in full if isinstance(m, p.Delete))
    assert dfull.old_kind == "O" and dfull.old == (b"1", b"x", b"v2")


def test_nulls() -> None:
    ins = MESSAGES[22]
    assert isinstance(ins, p.Insert)
    assert ins.new[0] == b"5" and set(ins.new[1:]) == {None}


def test_truncate_names_every_relation() -> None:
    trunc = MESSAGES[-2]
    assert isinstance(trunc, p.Truncate)
    rel_oids = {m.oid for m in MESSAGES if isinstance(m, p.Relation)}
    assert set(trunc.relation_oids) == rel_oids
    assert not trunc.cascade and not trunc.restart_identity


def test_origin_and_logical_message() -> None:
    origin = p.decode(b"O" + (0x16B3748).to_bytes(8, "big") + b"upstream\x00")
    assert origin == p.Origin(0x16B3748, "upstream")
    msg = p.decode(b"M\x01" + (7).to_bytes(8, "big") + b"pfx\x00" + (3).to_bytes(4, "big") + b"abc")
    assert msg == p.LogicalMessage(True, 7, "pfx", b"abc")


@pytest.mark.parametrize(
    "data",
    [b"", b"Z123", b"I\x00\x00", b"B\x00", b"R\x00\x00\x00\x01public", b"I\x00\x00\x00\x01N\x00\x01t\x00\x00\x00\x09ab"],
)
def test_malformed_messages_raise_a_clear_error(data: bytes) -> None:
    with pytest.raises(p.PgOutputError):
        p.decode(data)


def test_lsn_text_round_trip() -> None:
    assert p.format_lsn(0x16B3748) == "0/16B3748"
    assert p.format_lsn((0x16 << 32) | 0xB374D848) == "16/B374D848"
    assert p.parse_lsn("16/B374D848") == (0x16 << 32) | 0xB374D848
    with pytest.raises(ValueError, match="not an LSN"):
        p.parse_lsn("nope")
