"""The embedded runtime's window for an overlapping stage in a process of its own
(``EmbeddedRuntime(in_flight=N)``, ``hotline.runtime.embedded``): several messages at once,
the same key in order, each handled exactly once, also when one fails and is retried and when
the runtime is replaced in the middle (the done markers are honoured, the position never
passes a message that is not done)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, ClassVar

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from hotline.kernel.failures import FailurePolicy
from hotline.kernel.messages import Outgoing
from hotline.runtime.embedded import EmbeddedRuntime
from hotline.storage.engine import make_engine, make_sessionmaker, migrate
from hotline.storage.models import BusOffset
from hotline.storage.unit_of_work import SqlUnitOfWork
from schemas import Message
from schemas.items import ItemAccepted

FAST = FailurePolicy(max_failures=5, first_delay_seconds=0.001, max_delay_seconds=0.01)


class SlowStage:
    """Overlapping, not batchable (as classify): each message takes a while; records what it
    handled, how many ran at once, and trips once on the items named in ``trip``."""

    name: ClassVar[str] = "slow"
    inputs: ClassVar[tuple[str, ...]] = ("items.accepted",)
    overlapping: ClassVar[bool] = True

    def __init__(self, trip: set[str] | None = None, seconds: float = 0.05) -> None:
        self.trip = set(trip or ())
        self.seconds = seconds
        self.lock = threading.Lock()
        self.handled: list[str] = []
        self.running = 0
        self.most = 0

    def handle(self, topic: str, message: Message, uow: Any) -> list[Outgoing]:
        assert isinstance(message, ItemAccepted)
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            with self.lock:
                if message.item_id in self.trip:  # at once: the others are still in progress
                    self.trip.discard(message.item_id)
                    raise RuntimeError(f"tripped on {message.item_id}")
            time.sleep(self.seconds)
        finally:
            with self.lock:
                self.running -= 1
        with self.lock:
            self.handled.append(message.item_id)
        return []


@pytest.fixture()
def sessions(tmp_path: Path) -> sessionmaker[Session]:
    url = f"sqlite:///{tmp_path / 'window.db'}"
    migrate(url)
    return make_sessionmaker(make_engine(url))


def _enqueue(sessions: sessionmaker[Session], ids: list[str]) -> None:
    with sessions() as s:
        uow = SqlUnitOfWork(s)
        # The key of an items.accepted message is its URL: "same/1" and "same/2" are one key.
        uow.enqueue([Outgoing("items.accepted", ItemAccepted(item_id=i.split("/")[0],
                                                             url=f"http://h.test/{i.split('/')[0]}",
                                                             report_ids=[i])) for i in ids])
        uow.commit()


def _markers(sessions: sessionmaker[Session]) -> int:
    with sessions() as s:
        return int(s.scalar(select(func.count()).select_from(BusOffset).where(BusOffset.consumer == "slow#done")) or 0)


def _drain(runtime: EmbeddedRuntime, stage: SlowStage, seconds: float = 30) -> None:
    runtime.start()
    try:
        assert runtime.wait_idle(seconds)
    finally:
        runtime.stop()


def test_a_window_works_on_several_at_once_and_handles_each_once(sessions: sessionmaker[Session]) -> None:
    ids = [f"i{n}" for n in range(24)]
    _enqueue(sessions, ids)
    stage = SlowStage()
    _drain(EmbeddedRuntime(sessions, [stage], poll_seconds=0.01, policy=FAST, in_flight=4), stage)  # type: ignore[list-item]
    assert sorted(stage.handled) == sorted(ids)  # each once
    assert stage.most > 1  # they overlapped
    assert _markers(sessions) == 0  # the position moved over all of them


def test_one_key_goes_in_order_within_a_window(sessions: sessionmaker[Session]) -> None:
    _enqueue(sessions, ["same/1", "other/1", "same/2", "same/3", "other/2"])
    stage = SlowStage(seconds=0.02)

    order: list[str] = []
    original = stage.handle

    def recording(topic: str, message: Message, uow: Any) -> list[Outgoing]:
        out = original(topic, message, uow)
        assert isinstance(message, ItemAccepted)
        order.append(message.report_ids[0])
        return out

    stage.handle = recording  # type: ignore[method-assign]
    _drain(EmbeddedRuntime(sessions, [stage], poll_seconds=0.01, policy=FAST, in_flight=8), stage)  # type: ignore[list-item]
    assert [o for o in order if o.startswith("same")] == ["same/1", "same/2", "same/3"]
    assert [o for o in order if o.startswith("other")] == ["other/1", "other/2"]


def test_a_failing_message_is_retried_alone_and_the_others_are_not_repeated(sessions: sessionmaker[Session]) -> None:
    ids = [f"i{n}" for n in range(12)]
    _enqueue(sessions, ids)
    stage = SlowStage(trip={"i1", "i6"})
    _drain(EmbeddedRuntime(sessions, [stage], poll_seconds=0.01, policy=FAST, in_flight=4), stage)  # type: ignore[list-item]
    assert sorted(stage.handled) == sorted(ids)  # the tripped ones once they passed, nobody twice
    assert _markers(sessions) == 0


def test_markers_of_a_window_cut_short_are_honoured_by_the_next_runtime(sessions: sessionmaker[Session]) -> None:
    ids = [f"i{n}" for n in range(8)]
    _enqueue(sessions, ids)
    first = SlowStage(trip={"i0"})
    runtime = EmbeddedRuntime(sessions, [first], poll_seconds=0.01, policy=FAST, in_flight=4)  # type: ignore[list-item]
    with pytest.raises(RuntimeError, match="tripped on i0"):
        for _ in range(10_000):  # bounded: the window raises once the others are finished
            runtime.step(first)  # type: ignore[arg-type]
    runtime.stop()
    # i1-i3 are done, i0 is not, nothing new started after its failure: the position stays in
    # front of i0, the three are marked.
    assert sorted(first.handled) == ["i1", "i2", "i3"] and _markers(sessions) == 3
    assert not runtime.idle()
    # As after a crash: another runtime (one at a time now) takes over.
    second = SlowStage()
    _drain(EmbeddedRuntime(sessions, [second], poll_seconds=0.01, policy=FAST, in_flight=1), second)  # type: ignore[list-item]
    assert sorted(second.handled) == ["i0", "i4", "i5", "i6", "i7"]  # never i1-i3 again


def test_a_slow_message_does_not_hold_up_the_ones_behind_it(sessions: sessionmaker[Session]) -> None:
    _enqueue(sessions, ["slow"] + [f"i{n}" for n in range(10)])
    stage = SlowStage(seconds=0.01)
    original = stage.handle

    def slow_first(topic: str, message: Message, uow: Any) -> list[Outgoing]:
        assert isinstance(message, ItemAccepted)
        if message.item_id == "slow":
            time.sleep(2.0)  # a gallery page of many images, say
        return original(topic, message, uow)

    stage.handle = slow_first  # type: ignore[method-assign]
    _drain(EmbeddedRuntime(sessions, [stage], poll_seconds=0.01, policy=FAST, in_flight=2), stage)  # type: ignore[list-item]
    # The other place went through all ten while the slow one was in progress; the position
    # waited for it all the same (nothing marked is left).
    assert stage.handled[-1] == "slow" and sorted(stage.handled[:-1]) == sorted(f"i{n}" for n in range(10))
    assert _markers(sessions) == 0
