"""Transactions: records for several partitions plus group offsets, all or nothing.

The protocol is Kafka's, on one machine:

1. The data batches are appended to their partitions as transactional batches
   of the producer's id. Partitions track the open transaction, so
   read_committed readers stop at its first offset (the last stable offset).
2. The decision ``prepare_commit`` (with the list of partitions) is appended
   to ``__transaction_state`` and fsynced, after the data: the commit point.
3. A COMMIT control batch is appended to every partition; offsets committed in
   the transaction take effect; ``complete_commit`` is recorded.

Aborting writes ABORT markers instead, and the partitions remember the
aborted range so read_committed readers skip it. On open, a decision that was
made but not completed is completed, and every transaction still open in any
partition (a crash before its decision) is aborted.

``__transaction_state`` records::

    key   = transactional id
    value = JSON {"producer_id", "epoch", "state", "partitions": [[topic, partition], ...]}
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from .errors import TransactionError
from .log.batch import Encodable, Row
from .log.partition import Partition
from .log.store import LogStore
from .offsets import OFFSETS_TOPIC, GroupCoordinator, flush_claimed, offset_rows
from .records import TopicPartition

STATE_TOPIC = "__transaction_state"
STATE_TOPIC_CONFIG = {"cleanup.policy": "compact", "segment.bytes": 16 << 20}
MAX_BATCH_RECORDS = 10_000


@dataclass
class TransactionState:
    transactional_id: str
    producer_id: int
    epoch: int
    state: str = "empty"
    partitions: list[TopicPartition] = field(default_factory=list)


class TransactionCoordinator:
    def __init__(self, store: LogStore, groups: GroupCoordinator, *, fsync: bool = True) -> None:
        self.store = store
        self.groups = groups
        self.fsync = fsync
        if STATE_TOPIC not in store.topics:
            store.create_topic(STATE_TOPIC, 1, STATE_TOPIC_CONFIG)
        self._states: dict[str, TransactionState] = {}
        self._load()
        self._recover()

    @property
    def _log(self) -> Partition:
        return self.store.partition(STATE_TOPIC, 0)

    def _load(self) -> None:
        partition = self._log
        offset = partition.log_start_offset
        while True:
            result = partition.read(offset, 4 << 20)
            for batch in result.batches:
                for record in batch.records():
                    if record.key is None or record.value is None:
                        continue
                    body = json.loads(record.value)
                    self._states[record.key.decode()] = TransactionState(
                        record.key.decode(),
                        int(body["producer_id"]),
                        int(body["epoch"]),
                        body["state"],
                        [TopicPartition(t, int(p)) for t, p in body["partitions"]],
                    )
            if result.next_offset == offset:
                break
            offset = result.next_offset

    def _write_state(self, state: TransactionState, *, durable: bool) -> None:
        value = json.dumps(
            {
                "producer_id": state.producer_id,
                "epoch": state.epoch,
                "state": state.state,
                "partitions": [list(tp) for tp in state.partitions],
            }
        ).encode()
        self._log.append([Row(state.transactional_id.encode(), value, int(time.time() * 1000), [])])
        if durable and self.fsync:
            self._log.flush()

    def _recover(self) -> None:
        for state in self._states.values():
            if state.state in ("prepare_commit", "prepare_abort"):
                self._complete(state, commit=state.state == "prepare_commit")
        for partition in self.store.partitions():
            for producer_id in partition.ongoing_producers():
                partition.append_control(producer_id, -1, commit=False)
                partition.flush(fsync=self.fsync)
        self.groups.reload()  # offsets of transactions completed just now

    def init_producer(self, transactional_id: str) -> TransactionState:
        """Register (or re-register, fencing the old epoch) a transactional producer."""
        state = self._states.get(transactional_id)
        if state is None:
            next_id = max((s.producer_id for s in self._states.values()), default=999) + 1
            state = TransactionState(transactional_id, next_id, 0)
        else:
            if state.state == "ongoing":
                self._end(state, commit=False)
            state.epoch += 1
        state.state = "empty"
        state.partitions = []
        self._states[transactional_id] = state
        self._write_state(state, durable=False)
        return state

    def _check_epoch(self, state: TransactionState, epoch: int) -> None:
        current = self._states[state.transactional_id]
        if current.epoch != epoch or current.producer_id != state.producer_id:
            raise TransactionError(
                f"producer {state.transactional_id!r} epoch {epoch} was fenced by a newer one (epoch {current.epoch})"
            )

    def commit(
        self,
        state: TransactionState,
        epoch: int,
        data: Mapping[TopicPartition, Sequence[Encodable]],
        offsets: Mapping[str, Mapping[TopicPartition, int]],
    ) -> None:
        """Append ``data`` and ``offsets`` as one transaction and commit it."""
        self._check_epoch(state, epoch)
        state.state = "ongoing"
        state.partitions = sorted(set(data) | ({TopicPartition(OFFSETS_TOPIC, 0)} if offsets else set()))
        try:
            for tp, rows in data.items():
                partition = self.store.partition(tp.topic, tp.partition)
                for start in range(0, len(rows), MAX_BATCH_RECORDS):
                    partition.append(
                        rows[start : start + MAX_BATCH_RECORDS],
                        producer_id=state.producer_id,
                        producer_epoch=epoch,
                        transactional=True,
                    )
            offsets_partition = self.store.partition(OFFSETS_TOPIC, 0)
            for group, group_offsets in offsets.items():
                if self.fsync:
                    flush_claimed(self.store, group_offsets)
                offsets_partition.append(
                    offset_rows(group, group_offsets),
                    producer_id=state.producer_id,
                    producer_epoch=epoch,
                    transactional=True,
                )
        except BaseException:
            self._end(state, commit=False)
            raise
        if self.fsync:
            for tp in state.partitions:
                self.store.partition(tp.topic, tp.partition).flush()
        self._end(state, commit=True)
        for group, group_offsets in offsets.items():
            self.groups.apply(group, group_offsets)

    def _end(self, state: TransactionState, *, commit: bool) -> None:
        state.state = "prepare_commit" if commit else "prepare_abort"
        self._write_state(state, durable=True)
        self._complete(state, commit=commit)

    def _complete(self, state: TransactionState, *, commit: bool) -> None:
        for tp in state.partitions:
            try:
                partition = self.store.partition(tp.topic, tp.partition)
            except Exception:  # noqa: BLE001 - the topic was deleted since
                continue
            if state.producer_id in partition.ongoing_producers():
                partition.append_control(state.producer_id, state.epoch, commit=commit)
                if commit and self.fsync:  # the COMMIT marker is durable before complete_commit is written
                    partition.active_segment.flush()
        state.state = "complete_commit" if commit else "complete_abort"
        state.partitions = []
        self._write_state(state, durable=False)
        if commit and self.fsync:
            # Durable before the next transaction appends: else recovery, seeing only prepare_commit,
            # would commit that transaction's data as this one's.
            self._log.active_segment.flush()
