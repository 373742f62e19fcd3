"""Transactions: records for several partitions plus group offsets, all or nothing.

The protocol is Kafka's, on one machine:

1. The data batches are appended to their partitions as transactional batches
   of the producer's id. Partitions track the open transaction, so
   read_committed readers stop at its first offset (the last stable offset).
2. The decision ``prepare_commit`` (with the list of partitions) is appended
   to ``__transaction_state`` and fsynced, after the data: the commit point.
3. A COMMIT control batch is appended to every partition; offsets committed in
   the transaction take effect; ``complete_commit`` is recorded.

Aborting writes a durable ``prepare_abort`` and ABORT markers instead, and the
partitions remember the aborted range so read_committed readers skip it. On
open, a decision that was made but not completed is completed, and every
transaction still open in any partition (a crash before its decision) is
aborted.

A write can fail anywhere on this path (disk full, EIO). A transaction never
ends half-way because of it:

- before the commit point, ``commit`` raises and the transaction is aborted:
  ``prepare_abort`` is written durably *after* any ``prepare_commit`` that may
  have reached the file (the last record of a transactional id wins), then
  the ABORT markers;
- after the commit point, ``commit`` returns: the transaction is committed
  (as in Kafka, where the markers are written after the commit returns);
- whatever could not be written is retried, and until it is, the producer
  cannot start another transaction (its data would join the open one in the
  partitions): ``commit`` raises ``TransactionError``, and ``init_producer``
  completes the transaction first, raising ``StorageError`` while it still
  cannot. After a restart, recovery completes it the same way.

So ``commit`` returning means committed, and raising means aborted once the
producer is initialised again. Only a crash before that can still commit a
transaction whose commit raised: when its ``prepare_commit`` reached the disk
but its fsync failed. Its source offsets then say so, as they are part of it.

COMMIT markers are fsynced before ``complete_commit`` is written, and that
record before ``commit`` returns: a ``complete_commit`` never reaches the disk
ahead of its markers (recovery would abort data it was told committed), and a
lost one never lets recovery commit the next transaction's data as this one's
(found by the power-cut tests, tests/crash).

``__transaction_state`` records::

    key   = transactional id
    value = JSON {"producer_id", "epoch", "state", "partitions": [[topic, partition], ...]}
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from ...errors import TransactionError, UnknownTopicError
from ...log.batch import Encodable, Row
from ...log.partition import Partition
from ...log.store import LogStore
from ...records import TopicPartition
from .groups import OFFSETS_TOPIC, GroupCoordinator, flush_claimed, offset_rows
from .storage import partition_writes as writing

log = logging.getLogger(__name__)

STATE_TOPIC = "__transaction_state"
#: segments the cleaner reaches (never the active one): the topic stays near its live keys
STATE_TOPIC_CONFIG = {"cleanup.policy": "compact", "segment.bytes": 1 << 20, "segment.ms": 60 * 60 * 1000}
MAX_BATCH_RECORDS = 10_000
#: states in which the producer may start a transaction
FINAL_STATES = frozenset({"empty", "complete_commit", "complete_abort"})


@dataclass
class TransactionState:
    transactional_id: str
    producer_id: int
    epoch: int
    state: str = "empty"
    partitions: list[TopicPartition] = field(default_factory=list)
    # In memory only, for a transaction that is not complete:
    #: False while a ``prepare_abort`` decided in memory is not yet durable
    decision_written: bool = True
    #: the error that left it incomplete, for the message on the next use
    failure: str = ""

    @property
    def complete(self) -> bool:
        return self.state in FINAL_STATES


class TransactionCoordinator:
    def __init__(self, store: LogStore, groups: GroupCoordinator, *, fsync: bool = True) -> None:
        self.store = store
        self.groups = groups
        self.fsync = fsync
        #: how data reaches a partition; the backend puts its audit chain here (millpond.audit)
        self.append: Callable[..., int] = Partition.append
        if STATE_TOPIC not in store.topics:
            store.create_topic(STATE_TOPIC, 1, STATE_TOPIC_CONFIG)
        self._states: dict[str, TransactionState] = {}
        #: partitions holding COMMIT markers not yet fsynced
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
        partition = self._log
        with writing(partition):
            partition.append([Row(state.transactional_id.encode(), value, int(time.time() * 1000), [])])
            if durable and self.fsync:
                partition.flush()

    def _recover(self) -> None:
        for state in self._states.values():
            if state.state in ("prepare_commit", "prepare_abort"):
                self._complete(state, commit=state.state == "prepare_commit")
        for partition in self.store.partitions():
            for producer_id in partition.ongoing_producers():
                with writing(partition):
                    partition.append_control(producer_id, -1, commit=False)
                    partition.flush(fsync=self.fsync)
        self.groups.follow()  # the offsets of transactions completed just now, past where its load stopped

    def init_producer(self, transactional_id: str) -> TransactionState:
        """Register (or re-register, fencing the old epoch) a transactional producer.

        A transaction of this id that did not complete is completed first (see
        the module docstring); while that still fails, this raises its
        ``StorageError`` and the producer stays unusable.
        """
        state = self._states.get(transactional_id)
        if state is None:
            next_id = max((s.producer_id for s in self._states.values()), default=999) + 1
            new = TransactionState(transactional_id, next_id, 0)
            self._write_state(new, durable=False)
            self._states[transactional_id] = new
            return new
        if not state.complete:
            self._settle(state)
        previous = state.state
        state.epoch += 1
        state.state = "empty"
        try:
            self._write_state(state, durable=False)
        except BaseException:
            # Not re-registered: the producer holding the current epoch is not fenced by this.
            state.epoch -= 1
            state.state = previous
            raise
        return state

    def _check_epoch(self, state: TransactionState, epoch: int) -> None:
        current = self._states[state.transactional_id]
        if current.epoch != epoch or current.producer_id != state.producer_id:
            raise TransactionError(
                f"producer {state.transactional_id!r} epoch {epoch} was fenced by a newer one (epoch {current.epoch})"
            )
        if not current.complete:
            raise TransactionError(
                f"the last transaction of producer {state.transactional_id!r} is not complete "
                f"({current.state}, after: {current.failure or 'an error'}); "
                "initialise the producer again to complete it"
            )

    def commit(
        self,
        state: TransactionState,
        epoch: int,
        data: Mapping[TopicPartition, Sequence[Encodable]],
        offsets: Mapping[str, Mapping[TopicPartition, int]],
    ) -> None:
        """Append ``data`` and ``offsets`` as one transaction and commit it.

        Raises ``StorageError`` (``DiskFullError``) when a write before the
        commit point fails: the transaction is aborted, now or when the
        producer is initialised again. A failure after it does not raise (the
        transaction is committed); the markers it left out are written when
        the producer is initialised again.
        """
        self._check_epoch(state, epoch)
        state.state = "ongoing"
        state.partitions = sorted(set(data) | ({TopicPartition(OFFSETS_TOPIC, 0)} if offsets else set()))
        try:
            for tp, rows in data.items():
                partition = self.store.partition(tp.topic, tp.partition)
                with writing(partition):
                    for start in range(0, len(rows), MAX_BATCH_RECORDS):
                        self.append(
                            partition,
                            rows[start : start + MAX_BATCH_RECORDS],
                            producer_id=state.producer_id,
                            producer_epoch=epoch,
                            transactional=True,
                        )
            offsets_partition = self.store.partition(OFFSETS_TOPIC, 0)
            with writing(offsets_partition):
                for group, group_offsets in offsets.items():
                    if self.fsync:
                        flush_claimed(self.store, group_offsets)
                    offsets_partition.append(
                        offset_rows(group, group_offsets),
                        producer_id=state.producer_id,
                        producer_epoch=epoch,
                        transactional=True,
                    )
            if self.fsync:
                for tp in state.partitions:
                    partition = self.store.partition(tp.topic, tp.partition)
                    with writing(partition):
                        partition.flush()
            state.state = "prepare_commit"
            self._write_state(state, durable=True)  # the commit point, once it returns
        except BaseException as exc:
            # Not committed: a prepare_commit that failed to become durable is
            # overwritten by the prepare_abort written after it.
            state.state = "prepare_abort"
            state.decision_written = False
            self._abort_after(state, exc)
            raise
        # Committed, whatever fails from here on.
        for group, group_offsets in offsets.items():
            self.groups.apply(group, group_offsets)
        try:
            self._complete(state, commit=True)
        except Exception as exc:  # noqa: BLE001 - completed when the producer is initialised again
            state.failure = str(exc)
            log.warning(
                "transaction of %r committed, but its markers are not all written yet (%s); "
                "read_committed readers of its partitions wait until they are",
                state.transactional_id,
                exc,
            )

    def _abort_after(self, state: TransactionState, exc: BaseException) -> None:
        state.failure = str(exc)
        try:
            self._settle(state)
        except Exception:  # noqa: BLE001 - the caller raises the first error; the next init retries
            log.debug("transaction of %r stays open until its abort can be written", state.transactional_id,
                      exc_info=True)

    def _settle(self, state: TransactionState) -> None:
        """Complete a transaction whose commit or abort failed part-way (idempotent, retried)."""
        if state.state == "ongoing":
            state.state = "prepare_abort"
            state.decision_written = False
        if not state.decision_written:
            self._write_state(state, durable=True)
            state.decision_written = True
        self._complete(state, commit=state.state == "prepare_commit")

    def _complete(self, state: TransactionState, *, commit: bool) -> None:
        """Write the markers still missing, then the final state (every step may be repeated)."""
        for tp in state.partitions:
            try:
                partition = self.store.partition(tp.topic, tp.partition)
            except UnknownTopicError:  # the topic was deleted since
                continue
            if state.producer_id in partition.ongoing_producers():
                with writing(partition):
                    partition.append_control(state.producer_id, state.epoch, commit=commit)
                if commit and self.fsync:  # durable before complete_commit can claim it
                    with writing(partition):
                        partition.active_segment.flush()
        decided, partitions = state.state, state.partitions
        state.state = "complete_commit" if commit else "complete_abort"
        state.partitions = []
        try:
            self._write_state(state, durable=False)
            if commit and self.fsync:
                # Durable before the next transaction appends: recovery that saw only prepare_commit
                # would otherwise commit that transaction's data as this one's.
                with writing(self._log):
                    self._log.active_segment.flush()
        except BaseException:
            state.state, state.partitions = decided, partitions
            raise
        state.failure = ""
