"""The ports stages and the kernel work through: one repository per aggregate, gathered in
a unit of work whose transaction the runtime owns.

``hotline.storage.unit_of_work.SqlUnitOfWork`` is the real adapter (SQLAlchemy);
``hotline.storage.memory.MemoryUnitOfWork`` keeps the same state in dictionaries so stage
unit tests run without a database. The entities are the table classes of
``hotline.storage.models``, used as plain objects: a stage changes their fields and the
unit of work persists the change when the runtime commits.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

if TYPE_CHECKING:
    from hotline.kernel.messages import InvalidMessage, Outgoing
    from hotline.storage.models import (
        Assessment,
        BankEntry,
        Escalation,
        Followup,
        FollowupStep,
        Forward,
        ForwardStatus,
        Item,
        ItemEvent,
        Notice,
        PartnerUpdate,
        Report,
        ReportUrl,
    )
    from schemas.reports import ReportSubmitted


class AuditTrail(Protocol):
    def append(self, actor: str, action: str, subject: str, detail: str = "") -> None: ...


class ReportRepository(Protocol):
    def get(self, report_id: str) -> Report | None: ...
    def by_idempotency_key(self, key: str) -> Report | None: ...
    def create(self, msg: ReportSubmitted, idempotency_key: str | None = None) -> Report: ...
    def urls(self, report_id: str) -> Sequence[ReportUrl]: ...
    def link_url(
        self, report_id: str, position: int, url_as_reported: str, item_id: str | None,
        rejected_reason: str | None = None,
    ) -> None: ...
    def record_rejection(self, stage: str, err: InvalidMessage) -> None:
        """Make sure a rejected report is visible as rejected, whatever stage threw it out."""
        ...
    def from_partners(self, report_ids: Sequence[str]) -> list[Report]:
        """The reports among ``report_ids`` a partner hotline forwarded (channel ``partner``,
        ``partner_country`` set), in the order of ``report_ids``: one query for them all."""
        ...


class ItemWork(NamedTuple):
    """What classify needs of an item, read without loading the entity (``ItemRepository.work_of``):
    loading the whole ``Item`` twice per item was a fifth of classify's CPU."""

    url: str
    state: str
    classification: dict[str, Any] | None
    first_seen: datetime
    last_seen: datetime
    relookups: int
    """How many of the item's forwards a partner said moved (MO): ``ForwardQueue.moved_count``."""


class ItemRepository(Protocol):
    def get(self, item_id: str) -> Item | None: ...
    def work_of(self, item_id: str) -> ItemWork | None:
        """The item's :class:`ItemWork` in one statement (None: no such item); for a caller that
        changes it only through ``classify``."""
        ...
    def classify(self, item_id: str, work: ItemWork, classification: dict[str, Any],
                 hosting: tuple[str | None, str | None] | None, state: str, reason: str, stage: str,
                 *, if_unchanged: bool = False) -> bool:
        """Store the item's classification (and ``hosting``'s (country, hoster) unless None)
        and change its state from ``work.state`` as ``set_state`` does (checked, with the
        timeline event, freeing or taking the URL's slot), without loading the entity.
        ``if_unchanged``: only if the item is still unclassified in ``work.state`` (``work`` may
        have been read in an earlier transaction); False when it is not, and nothing changed."""
        ...
    def reload(self, item: Item) -> Item:
        """The item as committed now (another worker may have classified it meanwhile)."""
        ...
    def lock(self, item_ids: Sequence[str]) -> list[Item]:
        """Hold the items' rows for this transaction (in id order), and return them: outcomes
        recorded on the same items by two workers at once go one after the other."""
        ...
    def open_for_url(self, url: str) -> Item | None: ...
    def create(self, url: str) -> Item:
        """A new open item for ``url``; raises IntegrityError when another worker just opened
        one for the same URL (the retry then links to that item)."""
        ...
    def create_deferred(self, url: str) -> Item:
        """As ``create``, but its rows may go out only with the unit of work's next flush or
        commit, which then raises IntegrityError for a lost race: for a caller that refers to
        the item only through the repositories' objects (ingest: a flush per new item was a
        third of its CPU in a batch). ``open_for_url`` sees it at once."""
        ...
    def set_state(self, item: Item, state: str, reason: str, stage: str, at: datetime | None = None) -> None:
        """Change state (checked against ``hotline.kernel.states.TRANSITIONS``), with a
        timeline event (at ``at``, default now); a final state frees the URL for new work."""
        ...
    def add_event(self, item_id: str, stage: str, kind: str, detail: str = "", at: datetime | None = None) -> None: ...
    def events(self, item_id: str) -> Sequence[ItemEvent]: ...
    def report_ids(self, item_id: str) -> list[str]: ...
    def exists(self, item_id: str) -> bool:
        """Whether an item of that id is stored (its id only, no entity loaded)."""
        ...
    def in_state(self, state: str) -> Sequence[Item]: ...
    def add_images(self, item_id: str, images: Sequence[tuple[str, str]]) -> None:
        """Record the (sha256, image URL) pairs an item showed."""
        ...
    def sharing_images(self, item_id: str, sha256s: Sequence[str]) -> list[tuple[str, str, str]]:
        """(other item id, sha256, image URL) of every other item that showed one of ``sha256s``."""
        ...
    def first_sightings(self, item_id: str, sha256s: Sequence[str], count_up_to: int) -> list[tuple[str, str, str, int]]:
        """For each of ``sha256s`` another item showed: (the first such item's id, sha256, its
        image URL, how many other items showed it, counted up to ``count_up_to``); cheap
        however many copies exist."""
        ...


class NoticeRepository(Protocol):
    def get(self, notice_id: str) -> Notice | None: ...
    def look_up(self, notice_id: str, abuse_email: str, item_id: str) -> tuple[Notice | None, list[Notice], bool]:
        """``get(notice_id)``, ``held_for(abuse_email)`` and whether item ``item_id`` is stored,
        at once (one statement: notify asks all three of every new notice)."""
        ...
    def reserve(self, notice_id: str, item_id: str, hoster: str, abuse_email: str, message_id: str) -> Notice:
        """A new notice in status ``sending``."""
        ...
    def mark_sent(self, notice_id: str, at: datetime) -> bool:
        """Status ``sent``, ``sent_at`` = ``at``, without loading the notice; whether it exists."""
        ...
    def lock(self, notice_id: str) -> Notice | None:
        """The notice as committed now, locked until the transaction ends (PostgreSQL: FOR
        UPDATE), so two operators acting on one notice at once take turns."""
        ...
    def for_item(self, item_id: str) -> Sequence[Notice]:
        """Every notice of an item, oldest first."""
        ...
    def in_status(self, *statuses: str) -> Sequence[Notice]:
        """Notices in any of ``statuses``, oldest first."""
        ...
    def last_sent_to(self, abuse_email: str) -> datetime | None:
        """When the latest ``sent`` notice to ``abuse_email`` went out (grouping's window)."""
        ...
    def held_for(self, abuse_email: str) -> Sequence[Notice]:
        """The ``grouped`` notices held for ``abuse_email``, oldest first."""
        ...
    def in_group(self, message_id: str) -> Sequence[Notice]:
        """The notices of one e-mail (they share its Message-ID), oldest first."""
        ...
    def claim_held(self, at: datetime, until: datetime, limit: int) -> list[Notice]:
        """``grouped`` notices due (``held_until <= at``), oldest first; their ``held_until``
        is set to ``until`` (claimed until then). PostgreSQL: SKIP LOCKED."""
        ...


class ForwardRepository(Protocol):
    def get(self, forward_id: str) -> Forward | None: ...
    def open(self, forward_id: str, item_id: str, country: str, partner: str) -> Forward:
        """A new forward in status ``pending`` with no attempts."""
        ...
    # The forward as a delivery queue (``hotline.storage.deliveries``, ``services.escalate.forwards``).
    def lock(self, forward_id: str) -> Forward | None:
        """The forward as committed now, locked until the transaction ends (PostgreSQL: FOR UPDATE)."""
        ...
    def mark_sent(self, forward_id: str, at: datetime) -> int | None:
        """Delivered: ``sent`` at ``at`` (its row locked) unless it already is; its attempts, or
        None when it was ``sent`` already (or does not exist)."""
        ...
    def for_item(self, item_id: str) -> Sequence[Forward]:
        """Every forward of an item, oldest first."""
        ...
    def for_country(self, country: str) -> Sequence[Forward]:
        """The forwards to one country's partner, newest first."""
        ...
    def in_status(self, *statuses: str) -> Sequence[Forward]: ...
    def older_pending(self, forward: Forward) -> bool:
        """Whether an older forward of the same item is still pending (forwards go in order per item)."""
        ...
    def claim_due(self, at: datetime, limit: int, stale_before: datetime) -> list[Forward]:
        """Pending forwards due at ``at``, not in flight (``dispatched_at`` unset or before
        ``stale_before``) and without an older pending forward of their item; marked dispatched.
        Never the same row to two concurrent claimers (PostgreSQL: SKIP LOCKED)."""
        ...
    def add_status(self, forward_id: str, action: str, note: str | None, by: str, at: datetime) -> ForwardStatus: ...
    def statuses(self, forward_id: str) -> Sequence[ForwardStatus]:
        """What the partner reported back about a forward, in order."""
        ...
    def moved_count(self, item_id: str) -> int:
        """How many of an item's forwards a partner reported as moved (ICCAM ``MO``): one
        query, asked once for every item classify records."""
        ...


class PartnerUpdateRepository(Protocol):
    """Status updates back to the partner that forwarded a report (same queue as forwards,
    in order per report)."""

    def get(self, update_id: str) -> PartnerUpdate | None: ...
    def lock(self, update_id: str) -> PartnerUpdate | None: ...
    def mark_sent(self, update_id: str, at: datetime) -> int | None:
        """As ``ForwardRepository.mark_sent``."""
        ...
    def add(self, update: PartnerUpdate) -> PartnerUpdate: ...
    def for_report(self, report_id: str) -> Sequence[PartnerUpdate]: ...
    def in_status(self, *statuses: str) -> Sequence[PartnerUpdate]: ...
    def older_pending(self, update: PartnerUpdate) -> bool: ...
    def claim_due(self, at: datetime, limit: int, stale_before: datetime) -> list[PartnerUpdate]: ...


class EscalationRepository(Protocol):
    def add(
        self, escalation_id: str, item_id: str, payload: dict[str, Any], release_due_at: datetime | None = None,
    ) -> None:
        """A new escalation in state ``new``; ``release_due_at``: when the hold timer releases it."""
        ...
    def get(self, escalation_id: str) -> Escalation | None: ...
    def lock(self, escalation_id: str) -> Escalation | None:
        """The escalation as committed now, locked until the transaction ends (PostgreSQL: FOR
        UPDATE), so a police action and the hold timer never both change one escalation."""
        ...
    def newest(self, limit: int = 200, start: datetime | None = None, end: datetime | None = None) -> Sequence[Escalation]:
        """Escalations created in [start, end), newest first."""
        ...
    def claim_due(self, at: datetime, limit: int) -> list[Escalation]:
        """Escalations in ``new``/``received`` whose ``release_due_at <= at``, oldest due first;
        locked (PostgreSQL: SKIP LOCKED) so two hold timers never claim the same one."""
        ...
    def add_released(self, escalation_id: str, item_id: str, payload: dict[str, Any], by: str, outcome: str) -> None:
        """A record for the police that needs no release (reason ``no_partner``: the hotline
        noticed a foreign hoster directly): added in state ``released``."""
        ...


class AssessmentRepository(Protocol):
    def add(
        self, item_id: str, analyst: str, verdict: str, category: str | None, notes: str | None, *,
        images: list[Any] | None = None, answers: list[Any] | None = None,
        bank_entry_ids: list[int] | None = None, replaces_id: int | None = None,
    ) -> Assessment: ...
    def latest(self, item_id: str) -> Assessment | None:
        """The item's decision in force: its newest assessment (a senior's change is newer)."""
        ...


class BankRepository(Protocol):
    def add(self, *, category: str, source: str, **hashes: str | None) -> BankEntry: ...


class FollowupRepository(Protocol):
    """Follow-ups after a notice (``hotline.storage.followups``)."""

    def get(self, item_id: str) -> Followup | None: ...
    def get_for_update(self, item_id: str) -> Followup | None:
        """``get``, holding the row until the transaction ends (PostgreSQL: ``FOR UPDATE``), so
        two deliveries of one message recording at the same moment are done one after the other."""
        ...
    def get_many_for_update(self, item_ids: Sequence[str]) -> dict[str, Followup]:
        """``get_for_update`` for several rows in one statement (locked in ``item_id`` order,
        so two lockers of overlapping batches never deadlock); missing ids are left out."""
        ...
    def open(self, followup: Followup) -> Followup:
        """Start following an item up; an item already followed up keeps its row (returned)."""
        ...
    def unplanned(self, limit: int) -> list[Followup]:
        """Follow-ups opened by notify that have no first check yet (status ``new``)."""
        ...
    def claim_due(self, at: datetime, limit: int, per_hoster: int, stale_before: datetime) -> list[Followup]:
        """Due follow-ups not yet dispatched (or dispatched before ``stale_before``), oldest
        first, at most ``per_hoster`` in flight per hoster; marked dispatched at ``at``.
        Never the same row to two concurrent claimers (PostgreSQL: SKIP LOCKED)."""
        ...
    def claim_pending_steps(self, at: datetime, limit: int, stale_before: datetime) -> list[Followup]:
        """Follow-ups with a decided step whose message was never dispatched (or long ago)."""
        ...
    def get_step(self, step_id: str) -> FollowupStep | None: ...
    def add_step(self, step: FollowupStep) -> FollowupStep: ...
    def steps(self, item_id: str) -> Sequence[FollowupStep]: ...


class UnitOfWork(Protocol):
    # Read-only properties, so any adapter's own repository classes satisfy the protocol.
    @property
    def reports(self) -> ReportRepository: ...
    @property
    def items(self) -> ItemRepository: ...
    @property
    def notices(self) -> NoticeRepository: ...
    @property
    def forwards(self) -> ForwardRepository: ...
    @property
    def escalations(self) -> EscalationRepository: ...
    @property
    def assessments(self) -> AssessmentRepository: ...
    @property
    def bank(self) -> BankRepository: ...
    @property
    def followups(self) -> FollowupRepository: ...
    @property
    def audit(self) -> AuditTrail: ...
    @property
    def partner_updates(self) -> PartnerUpdateRepository: ...

    def enqueue(self, outgoing: Iterable[Outgoing]) -> None:
        """Publish messages *with* this unit of work (transactional outbox)."""
        ...
    def commit(self) -> None: ...
    def rollback(self) -> None: ...

