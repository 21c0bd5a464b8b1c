"""The Kafka runtime's overlapping step (``hotline.runtime.kafka._process_overlapping``, what an
``overlapping`` stage's agent runs over its stream): events with different keys are worked on at
the same time, those with the same key one after another in order, the next event starts as soon
as one of the window is done (not when all are), and offsets are acked in order, never past one
still unfinished."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator

from hotline.kernel.messages import Outgoing
from hotline.kernel.stage import overlapping
from hotline.runtime.kafka import _process_overlapping
from services.classify.stage import ClassifyStage
from tests.unit.test_batching import _Manual, _Tp
from tests.unit.test_parking import FAST, _App, _Produced


class _Message:
    def __init__(self, key: bytes, tp: _Tp) -> None:
        self.key = key
        self.tp = tp


class _Event:
    def __init__(self, key: bytes, value: bytes, tp: _Tp) -> None:
        self.value = value
        self.message = _Message(key, tp)


class _Processor:
    """Records when each event ran; events of keys ``b`` and ``c`` must meet at a barrier,
    which they pass only if both are being worked on at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ran: dict[str, tuple[float, float]] = {}
        self.meet = threading.Barrier(2, timeout=30)

    def process(self, logical: str, raw: bytes) -> list[Outgoing]:
        name = raw.decode()
        start = time.monotonic()
        if name in ("b1", "c1"):
            self.meet.wait()  # raises BrokenBarrierError when not run concurrently
        else:
            time.sleep(0.05)
        with self.lock:
            self.ran[name] = (start, time.monotonic())
        return []


def _run(events: list[_Event], processor: _Processor, tp: _Tp, manual: _Manual) -> None:
    produced: dict[str, _Produced] = {}
    asyncio.run(_process_overlapping(_App(tp), "items.accepted", "classify", processor,  # type: ignore[arg-type]
                                     lambda t: produced.setdefault(t, _Produced()), manual, events, FAST))


def test_different_keys_at_once_same_key_in_order_acks_after_all_in_order() -> None:
    tp = _Tp()
    events = [_Event(k.encode(), n.encode(), tp) for k, n in
              [("a", "a1"), ("b", "b1"), ("a", "a2"), ("c", "c1"), ("a", "a3")]]
    processor, manual = _Processor(), _Manual()
    _run(events, processor, tp, manual)
    assert manual.acked == events  # all of them, in the batch's order
    ran = processor.ran
    assert set(ran) == {"a1", "a2", "a3", "b1", "c1"}  # b1 and c1 met: they ran at the same time
    assert ran["a1"][1] <= ran["a2"][0] and ran["a2"][1] <= ran["a3"][0]  # one key: in order


def test_an_event_left_to_another_worker_stops_the_acks_of_its_partition() -> None:
    """An event whose partition was reassigned while it kept failing is not acked, and no later
    event of that partition is either (a commit past it would skip it); other partitions are."""
    mine, gone = _Tp(), _Tp()

    class Failing(_Processor):
        def process(self, logical: str, raw: bytes) -> list[Outgoing]:
            if raw == b"x1":
                raise RuntimeError("hoster away")
            return []

    events = [_Event(b"x", b"x1", gone), _Event(b"y", b"y1", gone), _Event(b"z", b"z1", mine)]
    manual = _Manual()
    _run(events, Failing(), mine, manual)  # the app owns only ``mine``: ``gone`` was reassigned
    assert manual.acked == [events[2]]


def test_a_slow_event_holds_up_only_itself_the_window_slides_past_it() -> None:
    """With two in flight, ``slow`` waits until ``f3`` has run: it can only if ``f2`` and ``f3``
    start while ``slow`` is still in progress (a batch of two waited for both). Their offsets are
    acked only after ``slow``'s (same partition), all in order."""
    tp = _Tp()
    f3_ran = threading.Event()
    acked_before_slow: list[list[_Event]] = []
    manual = _Manual()

    class Slow(_Processor):
        def process(self, logical: str, raw: bytes) -> list[Outgoing]:
            if raw == b"slow":
                assert f3_ran.wait(30), "f3 never ran while slow was in progress"
                acked_before_slow.append(list(manual.acked))
            elif raw == b"f3":
                f3_ran.set()
            return super().process(logical, raw)

    events = [_Event(k.encode(), k.encode(), tp) for k in ("slow", "f1", "f2", "f3")]

    async def stream() -> AsyncIterator[_Event]:
        for e in events:
            yield e

    produced: dict[str, _Produced] = {}
    asyncio.run(_process_overlapping(_App(tp), "items.accepted", "classify", Slow(),  # type: ignore[arg-type]
                                     lambda t: produced.setdefault(t, _Produced()), manual, stream(), FAST,
                                     in_flight=2))
    assert acked_before_slow == [[]]  # nothing of the partition acked past the slow one
    assert manual.acked == events


def test_a_stage_order_replaces_the_key() -> None:
    """``order`` (``hotline.kernel.stage.order_check``): events of different keys but the same
    order go one after another; the same key with different orders meet (run at once)."""
    tp = _Tp()
    events = [_Event(k.encode(), n.encode(), tp) for k, n in
              [("k1", "a1"), ("k1", "b1"), ("k2", "a2"), ("k1", "c1"), ("k3", "a3")]]
    processor, manual = _Processor(), _Manual()
    produced: dict[str, _Produced] = {}
    asyncio.run(_process_overlapping(_App(tp), "notices.ntd", "notify", processor,  # type: ignore[arg-type]
                                     lambda t: produced.setdefault(t, _Produced()), manual, events, FAST,
                                     order=lambda raw: raw.decode()[0]))  # "a2" -> "a"
    assert manual.acked == events
    ran = processor.ran
    assert set(ran) == {"a1", "a2", "a3", "b1", "c1"}  # b1 and c1 (same key k1) met at the barrier
    assert ran["a1"][1] <= ran["a2"][0] and ran["a2"][1] <= ran["a3"][0]  # one order: in order


def test_notify_orders_one_items_notices_or_with_grouping_one_address() -> None:
    from services.notify.stage import NotifyStage
    from tests.unit.stagekit import notice_for, notify_stage

    stage = notify_stage(object())
    one, other = notice_for("item-1"), notice_for("item-2")  # the same hoster and address
    assert stage.in_order_by("notices.ntd", one) != stage.in_order_by("notices.ntd", other)
    assert stage.in_order_by("notices.ntd", one) == stage.in_order_by(
        "notices.ntd", notice_for("item-1", notice_id="ntd-item-1-h2", hoster="Hoster B B.V.",
                                  abuse_email="abuse@hoster-b.test"))
    grouping = NotifyStage(mailer=object(), sender="n@hotline.test", group_seconds=60)  # type: ignore[arg-type]
    assert grouping.in_order_by("notices.ntd", one) == grouping.in_order_by("notices.ntd", other)


def test_classify_is_overlapping() -> None:
    assert overlapping(ClassifyStage)  # type: ignore[arg-type]


def test_notify_is_overlapping_and_batchable() -> None:
    """On Kafka notify overlaps (several e-mails in flight, one hoster's in order); the
    embedded runtime batches its bookkeeping."""
    from hotline.kernel.stage import batchable
    from services.notify.stage import NotifyStage

    assert overlapping(NotifyStage) and batchable(NotifyStage)  # type: ignore[arg-type]
