"""Escalate's quiet inputs (``hotline.kernel.stage``, "Quiet inputs"): the pipeline events it
reads only for partners' status updates are acked by the Kafka agent without a transaction
when they need nothing. What is checked: the stage says "nothing" only where ``handle`` indeed
returns nothing without touching the unit of work; invalid input and every other topic go the
usual way; the agent acks such an event without calling the stage's runner."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy.orm import sessionmaker

from hotline.config import Settings
from hotline.kernel.stage import quiet_check, read_inputs
from hotline.runtime.kafka import _make_agent, build_app
from schemas import Message
from schemas.facts import HostingFacts
from schemas.items import ItemAccepted, ItemClassified
from schemas.notices import NoticeEvent
from services.escalate.partners import PartnerDirectory, PartnerEntry
from services.escalate.stage import EscalateStage
from tests.unit.stagekit import escalate_stage, forward_for

PLAIN = PartnerDirectory({"DE": PartnerEntry(country="DE", name="Partner DE", endpoint="http://127.0.0.1:9/api")})
WITH_STATUS = PartnerDirectory({"DE": PartnerEntry(country="DE", name="Partner DE", endpoint="http://127.0.0.1:9/api",
                                                   status_endpoint="http://127.0.0.1:9/status")})
URL = "http://img.hoster-a.test/1.jpg"
HOSTING = HostingFacts(host="img.hoster-a.test", ip="127.0.0.2", country="NL")


class Untouchable:
    """A unit of work that fails the test on any use: ``handle`` must not need one."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the unit of work was used ({name})")


def classified(route: str) -> ItemClassified:
    return ItemClassified(item_id="i1", url=URL, online=route != "closed_offline", hosting=HOSTING,
                          route=route, reason="r")  # type: ignore[arg-type]


def event(kind: str) -> NoticeEvent:
    return NoticeEvent(event_id=f"e:{kind}", item_id="i1", kind=kind)  # type: ignore[arg-type]


MESSAGES: list[tuple[str, Message]] = [
    ("items.accepted", ItemAccepted(item_id="i1", url=URL, report_ids=["r1"])),
    ("items.classified", classified("ntd")),
    ("items.classified", classified("closed_offline")),
    *[("notices.events", event(k)) for k in ("sent", "delivered", "forwarded", "removed", "bounced")],
]


@pytest.mark.parametrize("partners", [PLAIN, WITH_STATUS], ids=["no status endpoint", "status endpoint"])
@pytest.mark.parametrize(("topic", "message"), MESSAGES, ids=[f"{t}-{i}" for i, (t, _) in enumerate(MESSAGES)])
def test_nothing_needed_means_handle_returns_nothing_without_the_unit_of_work(
    partners: PartnerDirectory, topic: str, message: Message
) -> None:
    stage = escalate_stage(object(), partners=partners)
    if stage.needs_nothing(topic, message):
        assert stage.handle(topic, message, Untouchable()) == []  # type: ignore[arg-type]


def test_without_status_endpoints_every_pipeline_event_needs_nothing() -> None:
    stage = escalate_stage(object(), partners=PLAIN)
    assert all(stage.needs_nothing(t, m) for t, m in MESSAGES)


def test_with_a_status_endpoint_the_steps_a_partner_hears_of_are_not_quiet() -> None:
    stage = escalate_stage(object(), partners=WITH_STATUS)
    quiet = {(t, getattr(m, "route", None) or getattr(m, "kind", None)) for t, m in MESSAGES if stage.needs_nothing(t, m)}
    assert quiet == {("items.classified", "ntd"), ("notices.events", "delivered"), ("notices.events", "bounced")}


def test_only_the_update_topics_are_checked_and_invalid_input_goes_the_usual_way() -> None:
    stage = escalate_stage(object(), partners=PLAIN)
    for topic in ("forwards.partner", "partners.status", "escalations.actions"):
        assert quiet_check(stage, topic) is None
    check = quiet_check(stage, "items.accepted")
    assert check is not None
    assert check(MESSAGES[0][1].to_bytes())
    assert not check(b'{"item_id": 5}') and not check(b"not json")


class _Manual:
    def __init__(self, events: list[Any]) -> None:
        self._events = events
        self.acked: list[Any] = []

    async def events(self) -> Any:
        for e in self._events:
            yield e

    async def ack(self, e: Any) -> None:
        self.acked.append(e)


class _Stream:
    def __init__(self, manual: _Manual) -> None:
        self.manual = manual

    def noack(self) -> _Manual:
        return self.manual


class _Event:
    def __init__(self, value: bytes) -> None:
        self.value = value


class _NoRunner:
    def process(self, *args: Any) -> Any:
        raise AssertionError("a quiet event went to the runner")


def test_the_agent_acks_a_quiet_event_without_the_runner() -> None:
    stage = EscalateStage(partners=PLAIN, gateway=object())  # type: ignore[arg-type]
    events = [_Event(m.to_bytes()) for t, m in MESSAGES if t == "notices.events"]
    manual = _Manual(events)
    agent = _make_agent(object(), "notices.events", "escalate", _NoRunner(), lambda t: None,  # type: ignore[arg-type]
                        quiet=quiet_check(stage, "notices.events"))
    asyncio.run(agent(_Stream(manual)))
    assert manual.acked == events


def test_a_forward_is_never_quiet() -> None:
    stage = escalate_stage(object(), partners=PLAIN)
    assert not stage.needs_nothing("forwards.partner", forward_for("i1"))


class _QuietStage:
    """A stage of one quiet topic: messages whose item id starts with ``q`` need nothing."""

    name = "quietish"
    inputs = ("items.accepted",)

    def __init__(self) -> None:
        self.handled: list[str] = []

    def quiet_inputs(self) -> frozenset[str]:
        return frozenset({"items.accepted"})

    def needs_nothing(self, topic: str, message: Message) -> bool:
        return isinstance(message, ItemAccepted) and message.item_id.startswith("q")

    def handle(self, topic: str, message: Message, uow: Any) -> list[Any]:
        assert isinstance(message, ItemAccepted)
        assert not message.item_id.startswith("q"), "a quiet message reached handle"
        self.handled.append(message.item_id)
        return []


def test_the_embedded_runtime_passes_over_quiet_messages_in_few_commits(tmp_path: Any) -> None:
    from sqlalchemy import event as sa_event

    from hotline.kernel.messages import Outgoing
    from hotline.runtime.embedded import QUIET_READ, EmbeddedRuntime
    from hotline.storage.engine import make_engine, make_sessionmaker, migrate
    from hotline.storage.unit_of_work import SqlUnitOfWork

    url = f"sqlite:///{tmp_path / 'quiet.db'}"
    migrate(url)
    engine = make_engine(url)
    sessions = make_sessionmaker(engine)
    ids = [f"q{i}" for i in range(5)] + ["n1"] + [f"q{i}" for i in range(5, 5 + 2 * QUIET_READ + 3)] + ["n2", "q-last"]
    with sessions() as s:
        uow = SqlUnitOfWork(s)
        uow.enqueue([Outgoing("items.accepted", ItemAccepted(item_id=i, url=URL, report_ids=["r"])) for i in ids])
        uow.commit()
    commits = []
    sa_event.listen(engine, "commit", lambda conn: commits.append(1))
    stage = _QuietStage()
    runtime = EmbeddedRuntime(sessions, [stage])  # type: ignore[list-item]
    while runtime.step(stage):  # type: ignore[arg-type]
        pass
    assert stage.handled == ["n1", "n2"]  # the needed ones, in order, once
    assert runtime.idle()  # every message consumed, the quiet ones too
    # n1 and n2 a commit each; the 2 * QUIET_READ + 3 quiet ones between them are passed over
    # in whole reads (one commit per read of nothing but quiet ones), the last one in one more.
    assert len(commits) == 2 + 2 + 1, len(commits)
    engine.dispose()


def test_without_status_endpoints_the_kafka_runtime_does_not_read_the_pipeline_events() -> None:
    assert read_inputs(escalate_stage(object(), partners=PLAIN)) == (
        "forwards.partner", "partners.status", "escalations.actions")


def test_with_a_status_endpoint_every_input_is_read() -> None:
    assert read_inputs(escalate_stage(object(), partners=WITH_STATUS)) == EscalateStage.inputs


def test_the_kafka_app_subscribes_to_the_inputs_read_only() -> None:
    settings = Settings(database_url="sqlite://", kafka_brokers="127.0.0.1:9", topic_prefix="t-unread.")
    for partners, expected in ((PLAIN, ("forwards.partner", "partners.status", "escalations.actions")),
                               (WITH_STATUS, EscalateStage.inputs)):
        app = build_app(settings, sessionmaker(), escalate_stage(object(), partners=partners))
        topics = {agent.channel.get_topic_name() for agent in app.agents.values()}
        assert topics == {f"t-unread.{t}" for t in expected}


def test_only_quiet_inputs_may_go_unread() -> None:
    stage = escalate_stage(object(), partners=PLAIN)
    stage.unread_inputs = lambda: frozenset({"forwards.partner"})  # type: ignore[method-assign]
    with pytest.raises(ValueError, match="must be quiet"):
        read_inputs(stage)
