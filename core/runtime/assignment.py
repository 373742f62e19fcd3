"""Which worker runs which source task, decided by Kafka's group protocol.

Each source task of a pipeline must run on exactly one live worker. Rather than
a consensus of its own (or another server), millpond borrows Kafka's consumer
group coordinator: every worker of pipeline ``P`` joins the group
``P.sources`` over the internal topic ``__millpond_source_tasks.P``, which has
one partition per source task (in pipeline order: the tasks of the first source
connector, then the next one's). Nothing is ever written to the topic; its
partitions only stand for tasks. The worker assigned partition i runs source
task i. When a worker joins, leaves or stops heartbeating (killed, paused,
partitioned), the coordinator moves partitions, and with them tasks, within the
session timeout.

Handing over is careful in two ways. Before a worker gives a partition back it
ends that task's incarnation (its transaction in hand is committed or aborted)
and only then lets the rebalance go on. And a worker that lost a task without
knowing it (paused past its session timeout) cannot commit any more: the new
owner's producer, with the same transactional id, fences it at ``init``.
aiokafka speaks the eager rebalance protocol: every rebalance takes all tasks
back and gives them out anew, so a worker's tasks pause briefly (a transaction
and a restart) whenever a worker joins or leaves, even those it keeps.

On the embedded log there is only ever one worker (it holds the log's lock), so
no assignment runs there and every source task is simply this worker's.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

from ..backends.base import Consumer, IsolationLevel, LogBackend, Membership, TopicSpec
from ..errors import MillpondError, UnknownTopicError
from ..records import TopicPartition

log = logging.getLogger("millpond.runtime.assignment")

SOURCE_TASKS_TOPIC = "__millpond_source_tasks"
#: how long a revoked task may take to finish its transaction before the rebalance goes on anyway
#: (past it, the next owner's producer fences this one)
HANDOVER_TIMEOUT_S = 30.0
#: how often the member polls: keeps it inside aiokafka's max poll interval and runs its callbacks
POLL_S = 0.5


def tasks_topic(pipeline: str) -> str:
    return f"{SOURCE_TASKS_TOPIC}.{pipeline}"


def tasks_group(pipeline: str) -> str:
    return f"{pipeline}.sources"


class SourceAssignment:
    """This worker's membership in its pipeline's source-task group.

    ``start`` / ``stop`` are called with the task's index (its partition) when the
    group gives a task to this worker or takes it away; ``stop`` returns once the
    task's incarnation has ended, so the next owner starts from a settled log.
    """

    def __init__(
        self,
        backend: LogBackend,
        pipeline: str,
        tasks: Sequence[str],
        worker_id: str,
        start: Callable[[int], None],
        stop: Callable[[int], Awaitable[None]],
    ) -> None:
        self.backend = backend
        self.pipeline = pipeline
        #: task names by index, for messages
        self.tasks = list(tasks)
        self.worker_id = worker_id
        self._start = start
        self._stop = stop
        self.topic = tasks_topic(pipeline)
        self.group = tasks_group(pipeline)
        #: indices of the tasks this worker owns now
        self.owned: set[int] = set()
        #: the group has given this worker its share at least once (until then no task here is known idle)
        self.settled = False
        self._consumer: Consumer | None = None
        self._loop: asyncio.Task[None] | None = None

    async def ensure_topic(self) -> None:
        """Create the topic with one partition per source task. It holds no records, so one with
        too few partitions (the pipeline gained tasks) is replaced; extra partitions stand for no task."""
        wanted = len(self.tasks)
        try:
            have = await self.backend.partitions_for(self.topic)
        except UnknownTopicError:
            have = 0
        if 0 < have < wanted:
            log.info("topic %r has %d partition(s) for %d source task(s): re-created", self.topic, have, wanted)
            await self.backend.delete_topic(self.topic)
            have = 0
        if have == 0:
            await self.backend.create_topic(TopicSpec(self.topic, wanted), exist_ok=True)

    async def open(self) -> None:
        """Join the group (in the background: tasks start as the group assigns them)."""
        await self.ensure_topic()
        self._consumer = self.backend.consumer(
            [self.topic], group=self.group, isolation=IsolationLevel.read_uncommitted, reset="latest",
            membership=Membership(self, client_id=f"millpond-{self.worker_id}"),
        )
        self._loop = asyncio.create_task(self._keep_alive(), name="millpond-source-assignment")

    async def _keep_alive(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        while True:
            try:
                await consumer.poll(1, POLL_S)
            except asyncio.CancelledError:
                raise
            except MillpondError as exc:
                log.warning("source task assignment (group %r): %s; trying again", self.group, exc)
                await asyncio.sleep(POLL_S)
            except Exception as exc:  # noqa: BLE001 - a client error: keep the membership alive
                log.warning("source task assignment (group %r): %s: %s; trying again", self.group,
                            type(exc).__name__, exc)
                await asyncio.sleep(POLL_S)

    async def close(self) -> None:
        """Stop this worker's tasks, then leave the group: the other workers take them at once
        (no session timeout). Leaving calls no revocation, so the tasks are stopped here first."""
        if self._loop is not None:
            self._loop.cancel()
            await asyncio.gather(self._loop, return_exceptions=True)
            self._loop = None
        await self._hand_over(sorted(self.owned))
        if self._consumer is not None:
            await self._consumer.close()
            self._consumer = None

    # -- the group's calls -------------------------------------------------------

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        mine = {tp.partition for tp in assigned if tp.partition < len(self.tasks)}
        self.owned = mine
        self.settled = True
        log.info("worker %s runs source task(s) %s", self.worker_id,
                 ", ".join(repr(self.tasks[i]) for i in sorted(mine)) or "none (others run them)")
        for i in sorted(mine):
            self._start(i)

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._hand_over(sorted(tp.partition for tp in revoked if tp.partition in self.owned))

    async def _hand_over(self, gone: list[int]) -> None:
        """Stop the tasks ``gone`` and wait (bounded) until their transactions are settled."""
        self.owned -= set(gone)
        if not gone:
            return
        try:
            await asyncio.wait_for(asyncio.gather(*(self._stop(i) for i in gone)), HANDOVER_TIMEOUT_S)
        except asyncio.TimeoutError:
            log.warning("source task(s) %s did not finish their transaction within %.0fs of a rebalance; "
                        "their next owner fences them", ", ".join(repr(self.tasks[i]) for i in gone),
                        HANDOVER_TIMEOUT_S)
