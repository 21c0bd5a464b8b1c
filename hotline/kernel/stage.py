"""What a stage is, independent of transport and storage.

A stage takes one message and decides; the runtime owns the transaction. ``handle``
reads and changes state through the unit of work it is handed (``hotline.kernel.ports``)
and returns either the messages it produces, or a ``SideEffect`` when something outside
the database must happen (an e-mail, a partner's HTTP endpoint). A side effect is three
steps the runtime runs with a commit between each (reserve → act → record):

1. ``handle`` *reserves*: records the intent (a notice ``sending``) and returns the effect;
   the runtime commits that, so the intent is durable before anything leaves the machine;
2. the runtime calls ``act()`` outside any transaction (no lock is held while a slow
   server answers);
3. the runtime calls ``done(uow, value)`` or ``failed(uow, error)`` in a new transaction
   and commits what it records together with the messages it returns (and, embedded,
   the consumer position). ``failed`` may return ``RetryLater``: what it recorded is
   committed, and the message is retried after back-off as if ``error`` had been raised.

No stage commits, rolls back or sleeps; a crash between any two steps redelivers the
message to ``handle``, which sees the reservation and decides what is safe.

**Batches.** A stage whose class says ``batchable = True`` lets the runtime hand it several
messages in *one* transaction, one ``handle`` after another on the same unit of work (see
``hotline.runtime.steps.StepRunner.process_batch``): its ``handle`` must only read and
change state through that unit of work (no state of its own between messages) and must
see the changes of the messages before it as committed ones. A ``SideEffect`` still gets
its own commit before it acts, and an error in any message rolls the whole batch back and
the runtime goes one message at a time, so batching changes how often the runtime commits,
never what is committed. Ingest (always plain outputs) and notify (bookkeeping of sent,
held and redelivered notices between its e-mails) say so; a stage that says nothing is
handed one message per transaction.

**Overlapping.** A stage whose class says ``overlapping = True`` lets the Kafka runtime work
on several of its messages at once in one process (``HOTLINE_STAGE_IN_FLIGHT``), each
through its own reserve, act and record exactly as alone, messages with the same key one
after another in their order. Its work must be safe on several threads at once and against
another process working on the same item (which it must be anyway: several processes share
its partitions). Classify says so: most of an item's time is waiting for hosters, DNS, RDAP
and the database, and with one item at a time a process would sit idle through it. Notify
says so too (an SMTP conversation per e-mail); it is also batchable, and the Kafka runtime
overlaps a stage that allows both when ``HOTLINE_STAGE_IN_FLIGHT`` > 1 (batches otherwise;
the embedded runtime always batches). A stage may say what must go one after another instead
of the topic's key (``in_order_by(topic, message)``): notify orders only the notices of one
item (or, with grouping on, of one abuse address), not all of a hoster's, so a burst to one
hoster still has several e-mails in flight.

**Quiet inputs.** A stage may name input topics (``quiet_inputs()``) of which many messages
need nothing from it, and say from a valid message alone that it needs nothing
(``needs_nothing(topic, message)``: ``handle`` would return no messages and neither read nor
change any state). The Kafka runtime (one message at a time; a batchable or overlapping
stage's go the usual way) then acks such a message where it reads it, without a thread hop or
a transaction: it had nothing to commit or deliver. The embedded runtime passes over them
where it reads them (``EmbeddedRuntime._next_needed``): the next needed message's commit moves
the position past them, and a run of nothing but quiet ones costs one commit. Anything else (invalid input too, which ``run_stage`` rejects)
goes the usual way. Escalate says so for the pipeline's events it only reads for partners'
status updates, which most deployments' partners do not take (each event cost the process
more in that hop than the stage's decision does).

**Unread inputs.** Where a stage's configuration means that *no* message of a quiet input can
need anything (``unread_inputs()``: escalate when no partner has a status endpoint), the Kafka
runtime does not subscribe to that topic at all (``read_inputs``): acking unread still cost the
fetch, decoding and faust's per-event work of three events per item. What that means later:
once the configuration changes (a partner gets a status endpoint) and the stage restarts, it
reads the topic from its group's committed offset, or, if it never read it, from the earliest
message still retained, so events of that time still get their updates, late and each once
(every update carries its idempotency key); nothing older than the topic's retention does. The
embedded runtime reads every input (passing over quiet ones costs it next to nothing).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from hotline.kernel.messages import InvalidMessage, Outgoing, decode, field_of, rejection
from hotline.kernel.ports import UnitOfWork
from hotline.kernel.states import ItemState, can_transition
from schemas import Message

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetryLater:
    """Returned by ``SideEffect.failed``: keep what was recorded, retry the message later."""

    error: BaseException
    after_seconds: float | None = None  # the stage's own pace, e.g. a partner's retry interval


@dataclass(frozen=True)
class SideEffect:
    """An action outside the database, run by the runtime between two commits."""

    act: Callable[[], Any]
    done: Callable[[UnitOfWork, Any], list[Outgoing]]
    failed: Callable[[UnitOfWork, Exception], list[Outgoing] | RetryLater]


Result = list[Outgoing] | SideEffect


class Stage(Protocol):
    name: ClassVar[str]
    inputs: ClassVar[tuple[str, ...]]

    def handle(self, topic: str, message: Message, uow: UnitOfWork) -> Result: ...


class Periodic(Protocol):
    """Work a runtime does on a timer rather than per message (the follow-up scheduler):
    ``tick`` reads and changes state through the unit of work and returns the messages to
    publish; the runtime commits both together (``hotline.runtime.periodic``)."""

    name: ClassVar[str]
    interval_seconds: float

    def tick(self, uow: UnitOfWork) -> list[Outgoing]: ...


def batchable(stage: Stage) -> bool:
    """True when ``stage`` may get several messages per transaction (its ``batchable`` class
    attribute; absent means no, so a stage opts in knowingly)."""
    return bool(getattr(stage, "batchable", False))


def overlapping(stage: Stage) -> bool:
    """True when the runtime may work on several of ``stage``'s messages at once (its
    ``overlapping`` class attribute; absent means no)."""
    return bool(getattr(stage, "overlapping", False))


def read_inputs(stage: Stage) -> tuple[str, ...]:
    """The inputs the Kafka runtime subscribes to: all but the stage's ``unread_inputs()``
    ("Unread inputs"), each of which must be a quiet input (so it only ever drops messages the
    stage would have acked unread)."""
    unread: Callable[[], frozenset[str]] | None = getattr(stage, "unread_inputs", None)
    if unread is None:
        return stage.inputs
    skipped = unread()
    quiet: Callable[[], frozenset[str]] | None = getattr(stage, "quiet_inputs", None)
    if not skipped <= (quiet() if quiet is not None else frozenset()):
        raise ValueError(f"stage {stage.name}: unread inputs must be quiet inputs")
    return tuple(t for t in stage.inputs if t not in skipped)


def order_check(stage: Stage, topic: str) -> Callable[[bytes | str], str | None] | None:
    """For an overlapping stage that says what must go one after another (``in_order_by(topic,
    message)``, e.g. notify: the notices of one item), a function of one raw message giving
    that (None when the message does not decode: the topic's key then). None when the stage
    says nothing: messages with the same topic key go one after another."""
    in_order_by: Callable[[str, Message], str] | None = getattr(stage, "in_order_by", None)
    if in_order_by is None:
        return None

    def key(raw: bytes | str) -> str | None:
        try:
            return in_order_by(topic, decode(topic, raw))
        except Exception:  # noqa: BLE001 - invalid input goes the usual way: run_stage rejects it
            return None

    return key


def quiet_check(stage: Stage, topic: str) -> Callable[[bytes | str], bool] | None:
    """For a quiet input of ``stage`` (``quiet_inputs``), a check of one raw message: True when
    it is valid and the stage needs nothing of it. None for every other topic (no check)."""
    quiet = getattr(stage, "quiet_inputs", None)
    if quiet is None or topic not in quiet():
        return None
    needs_nothing: Callable[[str, Message], bool] = stage.needs_nothing  # type: ignore[attr-defined]

    def check(raw: bytes | str) -> bool:
        try:
            message = decode(topic, raw)
        except Exception:  # noqa: BLE001 - invalid input goes the usual way: run_stage rejects it
            return False
        return needs_nothing(topic, message)

    return check


def run_stage(stage: Stage, topic: str, raw: bytes | str, uow: UnitOfWork) -> Result:
    """Decode and handle; invalid input becomes a rejection (the report recorded as rejected
    too, whatever the stage had changed is rolled back). Other exceptions propagate."""
    try:
        return stage.handle(topic, decode(topic, raw), uow)
    except InvalidMessage as err:
        log.warning("stage %s rejected a message from %s: %s", stage.name, topic, err)
        if err.report_id is None:
            rid = field_of(raw, "report_id")
            if rid and len(rid) <= 64:
                # A malformed message whose report id is still readable: record that report as
                # rejected too, or it would be a silent drop (404 on its status page).
                err.report_id = rid
        uow.rollback()
        uow.reports.record_rejection(stage.name, err)
        return [rejection(stage.name, topic, raw, err)]


def move_item(uow: UnitOfWork, item_id: str, state: ItemState, reason: str, stage: str) -> None:
    """Record an outcome on an item: move it if it still can go there, else only note it on
    its timeline (it may have been found removed while a mail or forward was on its way;
    the outcome happened and must not be rolled back by a refused transition)."""
    item = uow.items.get(item_id)
    if item is None:
        return
    if can_transition(item.state, state):
        uow.items.set_state(item, state, reason, stage)
    else:
        uow.items.add_event(item.id, stage, state, f"{reason} (the item stays {item.state})")


def complete(result: Result, uow: UnitOfWork) -> list[Outgoing]:
    """Run a stage's result to its end on one unit of work, committing between the steps as
    a runtime does; a ``RetryLater`` re-raises its error. For tests and tools that drive a
    stage by hand (the runtimes use ``hotline.runtime.steps``)."""
    if not isinstance(result, SideEffect):
        return result
    uow.commit()
    try:
        value = result.act()
    except Exception as exc:  # noqa: BLE001 - the stage's ``failed`` step judges it
        recorded = result.failed(uow, exc)
        if isinstance(recorded, RetryLater):
            uow.commit()
            if recorded.error is exc:
                raise
            raise recorded.error from exc
        return recorded
    return result.done(uow, value)
