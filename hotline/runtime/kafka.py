"""Distributed runtime: one stage per process, as a faust-streaming app on Apache Kafka.

The stage code is the same blocking code the embedded runtime runs; here it
runs in a worker thread (``loop.run_in_executor``) so the event loop keeps
heartbeating to the consumer group while a slow fetch or SMTP conversation is
under way.

Delivery is at-least-once, and the order of steps is what makes it so:

1. the stage handles the event through ``StepRunner`` (``hotline.runtime.steps``) and
   its database transactions commit (outgoing messages are *not* written to the
   ``bus_messages`` outbox: in Kafka mode the worker produces them itself);
2. every outgoing message is produced to Kafka and its delivery awaited;
3. only then is the source event acked, so its offset can be committed.

A crash between 1 and 3 redelivers the event; every stage is idempotent on
redelivery (ingest and classify re-publish what they produced before, notify
and escalate deduplicate by notice/forward id), so that costs a duplicate
message downstream at worst, never a second e-mail.

A ``batchable`` stage (``hotline.kernel.stage``) takes up to ``HOTLINE_BATCH_SIZE`` events
at a time (faust's ``noack_take``: events, never acked by faust; events of one partition in
order), handles them in one transaction (``StepRunner.process_batch``), produces all their
outputs and awaits delivery, then acks every event of the batch. A crash or rebalance
before the acks redelivers the whole batch, which the stages' idempotence absorbs as it does
for one event. If anything in the batch fails, the events not done go through the
one-at-a-time path below, with the failure policy for the failing one.

Acks are manual (``stream.noack()``) because faust acks an event in a
``finally`` block when the agent is cancelled: with automatic acks a worker
stopped by SIGTERM in the middle of retrying a failing event would commit its
offset and the event would be lost.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import tempfile
import time
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Sequence, Sized
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hotline.kernel.failures import FailurePolicy
from hotline.storage.contact_retention import CONTACT_TOPICS
from schemas import TOPICS

if TYPE_CHECKING:
    import faust
    from sqlalchemy.orm import Session, sessionmaker

    from hotline.config import Settings
    from hotline.kernel.messages import Outgoing
    from hotline.kernel.stage import Periodic, Stage
    from hotline.runtime.steps import StepRunner

log = logging.getLogger(__name__)

# A worker killed with -9 keeps its partitions until the group coordinator gives
# up on it: a short session makes a restarted or surviving worker take over in
# seconds instead of faust's default minute. Must be >= the broker's
# group.min.session.timeout.ms (6 s by default).
SESSION_TIMEOUT_SECONDS = 10.0
HEARTBEAT_SECONDS = 1.0

# The one failure policy (``hotline.kernel.failures``), with Kafka's back-off pace.
POLICY = FailurePolicy(first_delay_seconds=0.5, max_delay_seconds=30.0)

# How long a batch waits to fill before it goes with what it has: the added latency of a
# lone event (a notice must not wait), short against a transaction's own cost.
BATCH_WITHIN_SECONDS = 0.02

# How long the producer waits for more messages before it sends a request. faust's default
# (0) made nearly every message a request of its own (classify's two per item, two): the
# broker spent 7.8 ms CPU per item at 50 reports/s, ~3 with this (docs/benchmarks-pipeline.md,
# fifth round). The cost is at most this long per hop.
PRODUCER_LINGER_SECONDS = 0.005

# How far a stage process reads ahead of its work (back-pressure, issue 13). faust's defaults
# buffer up to 4,096 decoded events per input topic and aiokafka fetches up to 1 MiB per
# partition; in a 50,000-item burst a classify process held ~30 MB more than in steady work
# (319 MB peak RSS against 288, ``bench_scaleout``), over the 300 MB target. A stage works at
# tens to a few thousand events a second and takes at most HOTLINE_BATCH_SIZE (100) at once,
# so a few hundred events ahead keep it fed; the rest of a burst waits in Kafka.
STREAM_BUFFER_EVENTS = 512
FETCH_BYTES_PER_PARTITION = 256 * 1024


def kafka_topic(prefix: str, logical: str) -> str:
    """The real Kafka topic of a logical topic name (tests isolate themselves by prefix)."""
    return f"{prefix}{logical}"


def app_id_for(prefix: str, stage_name: str) -> str:
    """Consumer group and faust app id. Contains the prefix, so faust's own internal topics
    (``<app id>-__assignor-__leader``) and the group never collide between tests or deployments."""
    return f"hotline-{prefix}{stage_name}"


def contact_retention_ms(days: float) -> int:
    """``retention.ms`` of the topics that carry reporter addresses: the retention period, but
    at least one day (a shorter one could delete messages a stopped stage has not read yet)."""
    return int(max(days, 1.0) * 86_400_000)


def create_topics(
    brokers: str,
    prefix: str,
    partitions: int,
    replication_factor: int = 1,
    timeout_seconds: float = 30.0,
    contact_retention_days: float | None = None,
) -> list[str]:
    """Create every topic of ``schemas.TOPICS`` under ``prefix``; topics that exist are left alone.

    With ``contact_retention_days`` (``HOTLINE_REPORTER_RETENTION_DAYS``) the topics that carry
    reporter addresses (``hotline.storage.contact_retention.CONTACT_TOPICS``) get that
    ``retention.ms``, at least one day so an unconsumed message outlives a stage's outage.
    Existing topics keep theirs (docs/reliability.md "Privacy" shows how to change it).

    Returns the names that were created. Idempotent, so ``hotline topics create``
    and every worker's start-up may call it.
    """
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(
        bootstrap_servers=brokers.split(","),
        client_id="hotline-topics",
        request_timeout_ms=int(timeout_seconds * 1000),
    )
    try:
        existing = set(admin.list_topics())
        wanted = [kafka_topic(prefix, name) for name in TOPICS]
        missing = [name for name in wanted if name not in existing]
        created: list[str] = []
        contact = {kafka_topic(prefix, t) for t in CONTACT_TOPICS}
        for name in missing:
            configs: dict[str, str] = {}
            if contact_retention_days is not None and name in contact:
                configs["retention.ms"] = str(contact_retention_ms(contact_retention_days))
            # One request per topic: a racing creator (another worker starting at the same
            # moment) then only makes *that* topic's request fail, harmlessly.
            try:
                admin.create_topics(
                    [NewTopic(name, num_partitions=partitions, replication_factor=replication_factor,
                              topic_configs=configs)],
                    timeout_ms=int(timeout_seconds * 1000),
                )
                created.append(name)
            except TopicAlreadyExistsError:
                pass
        return created
    finally:
        admin.close()


def _faust_dir() -> Path:
    """Where faust's per-app data directories go (it makes only the last level itself)."""
    path = Path(tempfile.gettempdir()) / "hotline-faust"
    path.mkdir(exist_ok=True)
    return path


def build_app(settings: Settings, sessions: sessionmaker[Session], stage: Stage) -> faust.App:
    """The faust app of one stage: one agent per input topic, raw bytes in and out."""
    import faust

    from hotline.kernel.stage import batchable, order_check, overlapping, quiet_check, read_inputs
    from hotline.runtime.steps import StepRunner

    if not settings.kafka_brokers:
        raise ValueError("HOTLINE_KAFKA_BROKERS is not set: the Kafka runtime needs a broker")
    prefix = settings.topic_prefix
    stage_name = stage.name
    processor = StepRunner(stage, sessions)
    app = faust.App(
        app_id_for(prefix, stage_name),
        broker=[f"kafka://{b.strip()}" for b in settings.kafka_brokers.split(",") if b.strip()],
        web_enabled=False,
        store="memory://",
        # faust makes a data directory per app (by default ``<app id>-data`` in the working
        # directory); with in-memory tables it stays empty, so keep it out of the operator's
        # (and the tests') working directory.
        datadir=str(_faust_dir() / app_id_for(prefix, stage_name)),
        topic_partitions=settings.kafka_partitions,
        topic_replication_factor=1,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        producer_linger=PRODUCER_LINGER_SECONDS,
        broker_session_timeout=SESSION_TIMEOUT_SECONDS,
        broker_heartbeat_interval=HEARTBEAT_SECONDS,
        # Stage work (a page with 50 images, a slow SMTP server) can take long; faust must
        # not declare the consumer stuck while a thread works on an event.
        broker_max_poll_interval=600.0,
        # faust's default waits, on shutdown and before giving partitions up in a
        # rebalance, until every event in progress is acked. An event that keeps failing
        # is never acked, so that wait would hang the worker (and the whole group) for
        # as long as the failure lasts. Without it the event stays unacked and is
        # delivered again to whoever owns the partition next.
        stream_wait_empty=False,
        stream_buffer_maxsize=STREAM_BUFFER_EVENTS,
        consumer_max_fetch_size=FETCH_BYTES_PER_PARTITION,
    )
    outputs: dict[str, Any] = {}

    def output_topic(logical: str) -> Any:
        if logical not in outputs:
            outputs[logical] = app.topic(
                kafka_topic(prefix, logical),
                key_serializer="raw",
                value_serializer="raw",
                partitions=settings.kafka_partitions,
            )
        return outputs[logical]

    inputs = read_inputs(stage)
    if unread := [t for t in stage.inputs if t not in inputs]:
        log.info("stage %s does not read %s: its configuration needs nothing from them", stage_name,
                 ", ".join(unread))
    for logical in inputs:
        source = app.topic(
            kafka_topic(prefix, logical),
            key_serializer="raw",
            value_serializer="raw",
            partitions=settings.kafka_partitions,
        )
        app.agent(source, name=f"{stage_name}.{logical}")(
            _make_agent(app, logical, stage_name, processor, output_topic,
                        settings.batch_size if batchable(stage) else 1,
                        _in_flight(settings, sessions, stage) if overlapping(stage) else 1,
                        quiet_check(stage, logical), order_check(stage, logical))
        )
    return app


def _in_flight(settings: Settings, sessions: sessionmaker[Session], stage: Stage) -> int:
    """How many messages an overlapping stage works on at once: the stage's own number when it
    has one (notify: ``HOTLINE_NOTIFY_IN_FLIGHT``, set by the bootstrap), else
    ``HOTLINE_STAGE_IN_FLIGHT``; 1 on SQLite, whose one writer would make the overlapping
    transactions wait for each other (and time out)."""
    bind = sessions.kw.get("bind")
    if bind is not None and bind.dialect.name == "sqlite":
        return 1
    from hotline.runtime.steps import in_flight_of

    return in_flight_of(stage, settings.stage_in_flight)


def _make_agent(
    app: faust.App,
    logical: str,
    stage_name: str,
    processor: StepRunner,
    output_topic: Callable[[str], Any],
    batch_size: int = 1,
    in_flight: int = 1,
    quiet: Callable[[bytes], bool] | None = None,
    order: Callable[[bytes], str | None] | None = None,
) -> Callable[[Any], Any]:
    """The agent of one input topic. ``quiet`` (``hotline.kernel.stage.quiet_check``, one event
    at a time only): an event it says the stage needs nothing of is acked here, in the event
    loop, without the executor or a transaction (it had nothing to commit or deliver)."""
    async def agent(stream: Any) -> None:
        manual = stream.noack()
        # A stage that allows both (notify) overlaps: its time is waiting, not bookkeeping.
        if in_flight > 1:
            await _process_overlapping(app, logical, stage_name, processor, output_topic, manual, manual.events(),
                                       order=order, in_flight=in_flight)
            return
        if batch_size > 1:
            async for events in manual.noack_take(batch_size, within=BATCH_WITHIN_SECONDS):
                await _process_batch(app, logical, stage_name, processor, output_topic, manual, list(events))
            return
        async for event in manual.events():
            raw = event.value if isinstance(event.value, bytes) else str(event.value).encode()
            if quiet is not None and quiet(raw):
                await manual.ack(event)
                continue
            done = await _process_until_done(
                app, logical, stage_name, processor, output_topic, raw, event.message.tp
            )
            if done:
                # Only now, with state committed and outputs delivered, may the offset move.
                await manual.ack(event)

    # faust labels agents (logs, tracebacks) by the function's name.
    agent.__name__ = agent.__qualname__ = f"{stage_name}_{logical.replace('.', '_')}"
    return agent


def _raw(event: Any) -> bytes:
    return event.value if isinstance(event.value, bytes) else str(event.value).encode()


async def _deliver(output_topic: Callable[[str], Any], outgoing: Sequence[Outgoing]) -> None:
    """Produce ``outgoing`` in order and wait until every one is delivered (acks=all)."""
    pending = []
    for o in outgoing:
        fut = await output_topic(o.topic).send(key=o.key.encode(), value=o.message.to_bytes(), force=True)
        pending.append(fut)
    for fut in pending:
        await fut


async def _process_batch(
    app: faust.App,
    logical: str,
    stage_name: str,
    processor: StepRunner,
    output_topic: Callable[[str], Any],
    manual: Any,
    events: list[Any],
    policy: FailurePolicy = POLICY,
) -> None:
    """One batch: process it in the executor, deliver the outputs of the done prefix, ack
    those events; the rest (from a failing one on, or all if delivery failed) one at a time."""
    loop = asyncio.get_running_loop()
    started = time.monotonic()
    first_error: Exception | None = None
    done = 0
    try:
        outcome = await loop.run_in_executor(
            None, processor.process_batch, [(logical, _raw(e)) for e in events]
        )
        await _deliver(output_topic, outcome.flat())
        done, first_error = len(outcome.outputs), outcome.error
    except Exception as exc:  # noqa: BLE001 - committed but not delivered: again one at a time (idempotent)
        log.warning("stage %s: a batch of %d from %s failed (%r); one at a time",
                    stage_name, len(events), logical, exc)
    for event in events[:done]:
        # Only now, with state committed and outputs delivered, may the offsets move.
        await manual.ack(event)
    log.debug("stage %s: %d of %d event(s) from %s done as a batch in %.3fs",
              stage_name, done, len(events), logical, time.monotonic() - started)
    for event in events[done:]:
        if await _process_until_done(app, logical, stage_name, processor, output_topic, _raw(event),
                                     event.message.tp, policy, first_error=first_error):
            await manual.ack(event)
        first_error = None


@dataclass
class _Unacked:
    """An event of ``_process_overlapping`` not acked yet, in its partition's offset order."""

    event: Any
    done: bool = False
    dropped: bool = False  # its partition went to another worker: never acked here


async def _process_overlapping(
    app: faust.App,
    logical: str,
    stage_name: str,
    processor: StepRunner,
    output_topic: Callable[[str], Any],
    manual: Any,
    events: Iterable[Any] | AsyncIterable[Any],
    policy: FailurePolicy = POLICY,
    order: Callable[[bytes], str | None] | None = None,
    in_flight: int | None = None,
) -> None:
    """Work on up to ``in_flight`` events at once (all of a list when None), each as
    ``_process_until_done`` would alone (own transactions, failure policy, outputs delivered
    before its ack), taking the next as soon as one is done: a sliding window, so one slow
    e-mail or hoster holds up only the events that must wait for it (it held up the next batch
    when the agent took ``in_flight`` and waited for all). Events with the same key (or the
    same ``order``, ``hotline.kernel.stage.order_check``, when the stage says one) run one
    after another in their order, so per-key order is what one at a time gives. Offsets move
    in order per partition: an event is acked once it and every earlier event of its partition
    are done, never past one still in progress, so a crash redelivers what was not finished
    and nothing is skipped. An event left to another worker (``_process_until_done`` False)
    stops its partition's acks until the partition is back and redelivers from there."""
    window = asyncio.Semaphore(in_flight or (max(len(events), 1) if isinstance(events, Sized) else 1))
    chain_ends: dict[Any, asyncio.Future[None]] = {}  # the last event of each key, order or chain
    unacked: dict[Any, deque[_Unacked]] = {}
    lost: dict[Any, int | None] = {}  # partition -> the offset of its event left to another worker
    acking = asyncio.Lock()
    running: set[asyncio.Future[None]] = set()

    async def one(event: Any, entry: _Unacked | None, before: asyncio.Future[None] | None) -> None:
        try:
            if before is not None:
                await asyncio.wait({before})
            ok = await _process_until_done(app, logical, stage_name, processor, output_topic, _raw(event),
                                           event.message.tp, policy)
        finally:
            window.release()
        tp = event.message.tp
        if not ok:
            lost[tp] = getattr(event.message, "offset", None)
            for waiting in unacked.pop(tp, ()):
                waiting.dropped = True
            return
        if entry is None or entry.dropped:
            return
        entry.done = True
        async with acking:  # one task at a time pops and acks, so acks stay in offset order
            queue = unacked.get(tp)
            while queue and queue[0].done:
                await manual.ack(queue.popleft().event)

    def finished(key: Any, task: asyncio.Future[None]) -> None:
        running.discard(task)
        if chain_ends.get(key) is task:
            del chain_ends[key]
        if not task.cancelled() and task.exception() is not None:
            log.error("stage %s: an event from %s failed outside the failure policy", stage_name, logical,
                      exc_info=task.exception())

    try:
        async for event in _each(events):
            await window.acquire()
            tp = event.message.tp
            if tp in lost:
                offset, gone_at = getattr(event.message, "offset", None), lost[tp]
                if offset is not None and gone_at is not None and offset <= gone_at:
                    del lost[tp]  # the partition came back and redelivers from its commit
            entry = None
            if tp not in lost:
                entry = _Unacked(event)
                unacked.setdefault(tp, deque()).append(entry)
            by = order(_raw(event)) if order is not None else None
            key = ("key", event.message.key) if by is None else ("order", by)
            task: asyncio.Future[None] = asyncio.ensure_future(one(event, entry, chain_ends.get(key)))
            chain_ends[key] = task
            running.add(task)
            task.add_done_callback(functools.partial(finished, key))
        if running:
            await asyncio.gather(*running)
    finally:
        for left in running:
            left.cancel()
        if running:
            await asyncio.gather(*running, return_exceptions=True)


async def _each(events: Iterable[Any] | AsyncIterable[Any]) -> AsyncIterator[Any]:
    if isinstance(events, AsyncIterable):
        async for event in events:
            yield event
    else:
        for event in events:
            yield event


async def _process_until_done(
    app: faust.App,
    logical: str,
    stage_name: str,
    processor: StepRunner,
    output_topic: Callable[[str], Any],
    raw: bytes,
    tp: Any,
    policy: FailurePolicy = POLICY,
    first_error: Exception | None = None,
) -> bool:
    """Process one event; on failure the failure policy (``hotline.kernel.failures``)
    decides: retry after back-off, or park (reject with the reason and move on).

    Returns True when the event is done (state committed, outputs delivered). An outage
    (database down, SMTP refusing) holds up its partition for as long as it lasts;
    invalid input is not a failure here, ``run_stage`` turns it into a
    ``reports.rejected`` message. Returns False, without processing, only when a
    rebalance has given the partition to another worker, which will process the event
    itself. Cancellation (worker stopping) propagates, leaving the event unacked.
    ``first_error``: the event already failed once (in a batch, then alone); that attempt
    counts, and the next comes after its back-off.
    """
    from hotline.kernel.failures import FailureHistory, Park
    from hotline.runtime.steps import after_failure, failure_of

    loop = asyncio.get_running_loop()
    history = FailureHistory(policy)
    failed_before = first_error
    while True:
        started = time.monotonic()
        try:
            if failed_before is not None:
                error, failed_before = failed_before, None
                raise error
            if isinstance(history.decision, Park) and history.last_error is not None:
                why = history.decision.reason
                outgoing = await loop.run_in_executor(None, processor.park, logical, raw, history.last_error, why)
            else:
                outgoing = await loop.run_in_executor(None, processor.process, logical, raw)
            await _deliver(output_topic, outgoing)  # delivered (acks=all) before the source event is acked
        except Exception as exc:  # noqa: BLE001 - the failure policy decides what happens next
            delay = after_failure(history, exc)
            log.warning(
                "stage %s: event from %s failed (attempt %d), %s: %r",
                stage_name,
                logical,
                len(history),
                "parking it" if isinstance(history.decision, Park) else f"retrying in {delay:.1f}s",
                failure_of(exc),
                exc_info=len(history) == 1,
            )
            await asyncio.sleep(delay)
            if tp not in app.consumer.assignment():
                log.warning(
                    "stage %s: partition %s was reassigned while its event kept failing; "
                    "leaving the event to its new owner",
                    stage_name,
                    tp,
                )
                return False
            continue
        log.debug(
            "stage %s: event from %s done in %.3fs, %d message(s) out",
            stage_name,
            logical,
            time.monotonic() - started,
            len(outgoing),
        )
        return True


def use_uvloop() -> None:
    """Run the worker's event loops (faust's, and its consumer thread's) on uvloop, as uvicorn
    already does for the web process.

    Why: a stage process hops between its event loop, faust's consumer thread and the executor
    thread for every event (``call_soon_threadsafe``, futures, timers); with asyncio's pure
    Python loop that was 8-18 % of a stage process's CPU in the Kafka pipeline (py-spy, issue
    13). uvloop is the libuv loop mode supports (``mode.loop``); it is pinned for uvicorn."""
    import mode.loop

    mode.loop.use("uvloop")


def run_stage_worker(
    settings: Settings, sessions: sessionmaker[Session], stage: Stage, periodic: Sequence[Periodic] = ()
) -> None:
    """Run one stage as a faust worker until SIGTERM/SIGINT; returns after a clean stop.

    Creates the topics first (idempotent) so a worker started before
    ``hotline topics create`` does not fail on a missing topic. ``periodic`` tasks (the
    follow-up scheduler) tick in threads of this process and write their messages to the
    outbox, which an ``OutboxRelay`` of this process publishes (``hotline.runtime.periodic``).
    """
    use_uvloop()
    import faust

    from hotline.runtime.periodic import PeriodicRunner
    from hotline.runtime.relay import OutboxRelay

    if not settings.kafka_brokers:
        raise ValueError("HOTLINE_KAFKA_BROKERS is not set: the Kafka runtime needs a broker")
    create_topics(settings.kafka_brokers, settings.topic_prefix, settings.kafka_partitions,
                  contact_retention_days=settings.reporter_retention_days)
    app = build_app(settings, sessions, stage)
    # The worker installs SIGTERM/SIGINT handlers that stop the app: agents are
    # cancelled (an event in progress stays unacked), acked offsets are committed.
    # Logging is the caller's to set up (the CLI does), hence override_logging=False.
    worker = faust.Worker(app, override_logging=False)
    runners = [PeriodicRunner(sessions, task) for task in periodic]
    relay = OutboxRelay(sessions, settings.kafka_brokers, settings.topic_prefix) if runners else None
    if relay is not None:
        relay.start()
    for runner in runners:
        runner.start()
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        if exc.code not in (None, 0):
            raise
    finally:
        for runner in runners:
            runner.stop()
        if relay is not None:
            relay.stop()
