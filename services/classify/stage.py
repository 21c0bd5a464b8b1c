"""Classify: fetch an item's URL, hash every image, match against the bank, find the hoster
of the page and of every image (each by its own URL), and route it per hoster (NTD, analyst
assessment, partner forward, or closed as offline; ``services.classify.attribution``).

Image bytes live only in memory for the moment it takes to hash them. Hosting look-ups (DNS,
RDAP) run in the act step with the fetching, outside any transaction; their cache keeps its
own short transactions (``hotline.storage.hosting_cache``), and the facts the routing used
are recorded with the classification in the record step.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar
from urllib.parse import urlsplit

from hashing.image import FrameHashes, ImageHashes
from hashing.matcher import Hit
from hashing.signals import SIGNAL_TYPES
from hotline.kernel.messages import InvalidMessage, Outgoing
from hotline.kernel.ports import ItemWork, UnitOfWork
from hotline.kernel.stage import Result, SideEffect
from hotline.kernel.states import ItemState
from schemas import Message
from schemas.facts import BankMatch, HostingFacts, ImageFacts
from schemas.items import HosterRoute, ItemAccepted, ItemClassified
from schemas.notices import PartnerForward, PoliceEscalation, TakedownNotice
from services.classify.attribution import attribute
from services.classify.fetcher import (
    DEADLINE_PASSED,
    Fetched,
    Fetcher,
    FetchError,
    Names,
    fetch_each,
)
from services.classify.hosting import HostingResolver
from services.classify.page import image_urls
from services.classify.routing import RouteDecision, decide_route
from services.classify.sightings import record_sightings
from services.ingest.hosts import is_onion
from services.partners.logic import relookup_ids

ONION_REASON = (
    "Tor hidden service (.onion): not fetched, since no hoster can be noticed there; "
    "escalated to the police at once"
)

ROUTE_STATE = {
    "police": ItemState.ESCALATED,
    "ntd": ItemState.NOTICE_QUEUED,
    "forward": ItemState.FORWARD_QUEUED,
    "assessment": ItemState.AWAITING_ASSESSMENT,
    "closed_offline": ItemState.CLOSED_OFFLINE,
}


def _reraise(uow: UnitOfWork, exc: Exception) -> list[Outgoing]:
    """Classifying failed unexpectedly (fetch errors are facts, not failures): nothing was
    recorded, the failure policy decides."""
    raise exc

HashFn = Callable[[bytes], ImageHashes]
MatchFn = Callable[[Sequence[Mapping[str, Any]]], list[Hit | None]]
"""Images' hashes (:func:`hash_fields`) -> each one's best bank hit (``Bank.match_batch``)."""


@dataclass(frozen=True)
class Hashed:
    """An image hashed but not matched yet: its facts without ``match``, and what to match
    (its own hashes, then each sampled frame's). A page's images are matched together once all
    are hashed (``ClassifyStage._matched``)."""

    facts: ImageFacts
    probes: tuple[dict[str, Any], ...] = ()

HASH_FIELDS: tuple[str, ...] = (
    *SIGNAL_TYPES,
    *(s.quality_key for s in SIGNAL_TYPES.values() if s.quality_key),
)
"""What classify hands the matcher and keeps in ``ImageFacts``: one field per hash type of
the registry (``hashing.signals``) plus each type's quality (``pdq_quality``)."""


def hash_fields(hashes: ImageHashes | FrameHashes) -> dict[str, Any]:
    """The :data:`HASH_FIELDS` of an image or of one frame (a frame has no crypto hashes);
    values keep the types of the model's fields (``str | None``, qualities ``int | None``)."""
    return {k: getattr(hashes, k, None) for k in HASH_FIELDS}


def is_weak(hit: BankMatch) -> bool:
    """A hit on a weak type (pHash) alone is a hint for an analyst, not proof."""
    return SIGNAL_TYPES[hit.signal].weak


def looks_like_image(fetched: Fetched) -> bool:
    if fetched.content_type.startswith("image/"):
        return True
    head = fetched.body[:12]
    return head.startswith((b"\xff\xd8\xff", b"\x89PNG", b"GIF8")) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")


def _hoster_content(c: ItemClassified, r: HosterRoute) -> tuple[str, str | None, list[ImageFacts]]:
    """(URL, page it is shown on, images) of one hoster's decision: the page's hoster gets the
    page and every known image it shows; another hoster its own images, the first one's URL as
    the notice's URL and the page as where they were shown."""
    wanted = set(r.image_urls)
    images = [i for i in c.images if i.match is not None and i.url in wanted]
    if r.page or not images:
        return c.url, None, images
    return images[0].url, c.url, images


def takedown_notices(c: ItemClassified) -> list[TakedownNotice]:
    """Every takedown notice an item's classification calls for (one per hoster with an
    ``ntd`` decision and an abuse contact), in order; rebuilt from the stored classification
    they are the same notices every time (operators resend them: ``services.operations``).
    ``created_at`` is when classify saw the content. A classification stored before per-hoster
    attribution names one notice, to the page's hoster."""
    if not c.attribution:
        hosting: HostingFacts | None = c.hosting
        if c.route != "ntd" or hosting is None or not hosting.abuse:
            return []
        routes = [HosterRoute(hosting=hosting, route="ntd", reason=c.reason, page=True,
                              image_urls=[i.url for i in c.images if i.match is not None],
                              action_id=f"ntd-{c.item_id}")]
    else:
        routes = [r for r in c.attribution if r.route == "ntd" and r.action_id and r.hosting.abuse]
    out: list[TakedownNotice] = []
    for r in routes:
        h = r.hosting
        url, page_url, images = _hoster_content(c, r)
        copy_to = [h.cdn_abuse] if h.cdn_abuse and h.cdn_abuse.lower() != (h.abuse or "").lower() else []
        out.append(TakedownNotice(
            notice_id=r.action_id or f"ntd-{c.item_id}",
            item_id=c.item_id,
            url=url,
            hoster=h.hoster or h.host,
            abuse_email=h.abuse or "",
            country=h.country,
            images=images,
            hosting=h,
            created_at=c.classified_at,
            copy_to=copy_to,
            page_url=page_url,
        ))
    return out


def takedown_notice(
    c: ItemClassified, notice_id: str | None = None, abuse_email: str | None = None, based_on: str | None = None
) -> TakedownNotice | None:
    """One notice of the classification, or None (no notice called for): the one with
    ``notice_id`` (default: the first), or, for an id the classification does not name (an
    operator's "send elsewhere"), the one ``based_on`` names (default: the first) under that
    new id; ``abuse_email`` sends it to another address."""
    notices = takedown_notices(c)
    if not notices:
        return None
    by_id = {n.notice_id: n for n in notices}
    notice = by_id.get(notice_id or "") or by_id.get(based_on or "") or notices[0]
    update: dict[str, Any] = {}
    if notice_id and notice_id != notice.notice_id:
        update["notice_id"] = notice_id
    if abuse_email:
        update["abuse_email"] = abuse_email
    return notice.model_copy(update=update) if update else notice


def partner_forwards(c: ItemClassified, partner_names: dict[str, str], hotline_name: str) -> list[PartnerForward]:
    """Every partner forward the classification calls for (one per hoster abroad with a
    partner hotline), deterministic ids as the notices."""
    if not c.attribution:
        hosting: HostingFacts | None = c.hosting
        if c.route != "forward" or hosting is None or not hosting.country:
            return []
        routes = [HosterRoute(hosting=hosting, route="forward", reason=c.reason, page=True,
                              image_urls=[i.url for i in c.images if i.match is not None],
                              action_id=f"fwd-{c.item_id}")]
    else:
        routes = [r for r in c.attribution if r.route == "forward" and r.action_id and r.hosting.country]
    out: list[PartnerForward] = []
    for r in routes:
        country = r.hosting.country or ""
        url, _page_url, images = _hoster_content(c, r)
        out.append(PartnerForward(
            forward_id=r.action_id or f"fwd-{c.item_id}",
            item_id=c.item_id,
            url=url,
            country=country,
            partner_name=partner_names.get(country, ""),
            images=images,
            hosting=r.hosting,
            from_hotline=hotline_name,
        ))
    return out


def with_lookup_ids(c: ItemClassified, lookup: int) -> ItemClassified:
    """The classification of the ``lookup``-th new lookup of an item (0: the first), with the
    notice and forward ids of that lookup (``services.partners.logic.relookup_ids``: the
    first lookup's ``ntd-<item>`` becomes ``ntd-<item>-mo-<n>``, a second hoster's
    ``ntd-<item>-h2`` becomes ``ntd-<item>-mo-<n>-h2``), stored with it so that every rebuild
    of its notices names the same ids."""
    if lookup <= 0 or not c.attribution:
        return c
    notice_base, forward_base = relookup_ids(c.item_id, lookup)
    renamed = {f"ntd-{c.item_id}": notice_base, f"fwd-{c.item_id}": forward_base}

    def rename(action_id: str | None) -> str | None:
        for old, new in renamed.items():
            if action_id == old or (action_id or "").startswith(old + "-h"):
                return new + (action_id or "")[len(old):]
        return action_id

    return c.model_copy(update={"attribution": [r.model_copy(update={"action_id": rename(r.action_id)})
                                                for r in c.attribution]})


@dataclass
class ClassifyStage:
    fetcher: Fetcher
    hash_image: HashFn
    match: MatchFn
    hosting: HostingResolver
    partner_names: dict[str, str]  # country -> partner hotline name
    home_country: str = "NL"
    max_images: int = 50
    hotline_name: str = "Hotline"
    # One item (its page and all its images) is fetched within this many seconds; its images
    # are fetched this many at a time (HOTLINE_FETCH_ITEM_DEADLINE_SECONDS,
    # HOTLINE_FETCH_IMAGE_CONCURRENCY). Hashing runs one image at a time (``_hash_lock``), so
    # memory stays within one image's pixel cap however many are fetched at once.
    item_deadline_seconds: float = 30.0
    image_concurrency: int = 4
    _hash_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    name: ClassVar[str] = "classify"
    inputs: ClassVar[tuple[str, ...]] = ("items.accepted",)
    # Several items at once per process (hotline.kernel.stage "Overlapping"): an item waits on
    # hosters, DNS, RDAP and the database most of its time. Safe: the fetcher, hosting cache and
    # matcher are shared by threads already, hashing is one image at a time (``_hash_lock``),
    # and ``_record`` keeps the first classification when another worker got there first.
    overlapping: ClassVar[bool] = True

    def handle(self, topic: str, message: Message, uow: UnitOfWork) -> Result:
        assert isinstance(message, ItemAccepted)
        # The columns it needs, not the entity (``ItemRepository.work_of``: cheaper to read).
        work = uow.items.work_of(message.item_id)
        if work is None:
            raise InvalidMessage("unknown_item", f"item {message.item_id} was never accepted by ingest")
        if work.classification is not None:
            # Redelivery after a crash: publish the same results again (notify and escalate
            # deduplicate by notice/forward id), do no new work.
            return self._outputs(ItemClassified.model_validate(work.classification), uow, work)
        # Fetching and hashing is the slow part: it runs outside any transaction.
        item_id, url = message.item_id, work.url
        return SideEffect(
            act=lambda: self.classify(item_id, url),
            done=lambda u, classified: self._record(u, item_id, classified, work),
            failed=_reraise,
        )

    def _record(self, uow: UnitOfWork, item_id: str, classified: ItemClassified, seen: ItemWork) -> list[Outgoing]:
        # Written by Core statements (``classify``), not as an entity: its load and flush were a
        # fifth of classify's CPU. ``seen`` is the item as ``handle`` read it; the update applies
        # only if the item is still unclassified in that state, so the record transaction reads
        # the item again only when it changed meanwhile (a statement less per item).
        # A new lookup after a partner said the content moved (MO) gets ids of its own
        # (``work.relookups``: ``services.partners.logic.relookups``, counted in the same read).
        found, work = classified, seen
        classified = with_lookup_ids(found, work.relookups)
        if not self._store(uow, item_id, classified, work, if_unchanged=True):
            fresh = uow.items.work_of(item_id)
            assert fresh is not None
            if fresh.classification is not None:  # another worker classified it meanwhile
                return self._outputs(ItemClassified.model_validate(fresh.classification), uow, fresh)
            work, classified = fresh, with_lookup_ids(found, fresh.relookups)
            self._store(uow, item_id, classified, work)
        record_sightings(uow, item_id, classified)
        if classified.route == "police":
            escalation = PoliceEscalation(
                escalation_id=f"pol-{item_id}", item_id=item_id, url=work.url, first_seen=work.first_seen,
                last_seen=work.last_seen, report_ids=uow.items.report_ids(item_id), reason="onion",
            )
            uow.escalations.add(escalation.escalation_id, item_id, escalation.model_dump(mode="json"))
            return [Outgoing("items.classified", classified), Outgoing("escalations.police", escalation)]
        record = self._police_record(classified, uow, work)
        if record is not None:
            first = takedown_notice(classified)
            uow.escalations.add_released(record.escalation_id, item_id, record.model_dump(mode="json"), self.name,
                                         f"takedown notice {first.notice_id if first else ''} to "
                                         f"{classified.hosting.abuse if classified.hosting else ''}")
        return self._outputs(classified, uow, work)

    def _store(self, uow: UnitOfWork, item_id: str, c: ItemClassified, work: ItemWork, *, if_unchanged: bool = False) -> bool:
        h = c.hosting
        return uow.items.classify(item_id, work, c.model_dump(mode="json"), (h.country, h.hoster) if h else None,
                                  ROUTE_STATE[c.route], c.reason, self.name, if_unchanged=if_unchanged)

    def classify(self, item_id: str, url: str) -> ItemClassified:
        if is_onion((urlsplit(url).hostname or "").lower()):  # never fetched: no hoster to notice, only the police
            return ItemClassified(item_id=item_id, url=url, online=False,
                                  hosting=HostingFacts(host=(urlsplit(url).hostname or "").lower(), source="onion"),
                                  known=False, route="police", reason=ONION_REASON)
        looked_up: dict[str, HostingFacts] = {}  # one look-up per host per item (failures too)

        def hosting_of(any_url: str) -> HostingFacts:
            host = (urlsplit(any_url).hostname or "").lower()  # "[fd00::1]": hostname has no brackets
            if host not in looked_up:
                looked_up[host] = self.hosting.facts(host)
            return looked_up[host]

        hosting = hosting_of(url)
        online = True
        offline_reason = ""
        status: int | None = None
        content_type: str | None = None
        images: list[ImageFacts] = []
        deadline = time.monotonic() + self.item_deadline_seconds
        try:
            names = Names()  # each host resolved (and vetted) once for the page and all its images
            page = self.fetcher.get(url, deadline=deadline, names=names)
            status, content_type = page.status, page.content_type
            if page.status >= 400:
                online, offline_reason = False, f"the URL answered HTTP {page.status}: content is not (or no longer) online"
            elif looks_like_image(page):
                images = self._matched([self._image_facts(url, page.body)], hosting_of)
            elif "html" in page.content_type:
                html, final_url = page.body.decode("utf-8", "replace"), page.final_url
                del page  # the page's bytes are not needed while its images are fetched
                found = image_urls(html, final_url, self.max_images, deadline)
                del html
                fetched = fetch_each(self.fetcher, found, lambda u, r: self._fetched_image(u, r, deadline),
                                     deadline=deadline, concurrency=self.image_concurrency, names=names)
                images = self._matched(fetched, hosting_of)
        except FetchError as err:
            online, offline_reason = False, f"could not fetch the URL ({err.code}): {err.reason}"
        strong = [i for i in images if i.match is not None and not is_weak(i.match)]
        known = bool(strong)
        weak = any(i.match is not None and is_weak(i.match) for i in images)
        routes: list[HosterRoute] = []
        if online and known:
            attribution = attribute(item_id, hosting, strong, self._decide_for_hoster)
            decision, routes = attribution.decision, attribution.routes
        else:
            decision = decide_route(
                online=online,
                offline_reason=offline_reason,
                known=known,
                weak_match=weak,
                image_count=sum(1 for i in images if i.error is None),
                hosting=hosting,
                home_country=self.home_country,
                partner_countries=set(self.partner_names),
            )
        return ItemClassified(
            item_id=item_id,
            url=url,
            online=online,
            http_status=status,
            content_type=content_type,
            images=images,
            hosting=hosting,
            known=known,
            route=decision.route,  # type: ignore[arg-type]
            reason=decision.reason,
            attribution=routes,
        )

    def _decide_for_hoster(self, facts: HostingFacts, image_count: int) -> RouteDecision:
        """The routing table for one hoster serving (or, for the page, showing) known material."""
        return decide_route(
            online=True, offline_reason="", known=True, image_count=image_count, hosting=facts,
            home_country=self.home_country, partner_countries=set(self.partner_names),
        )

    def _fetched_image(self, url: str, result: Fetched | FetchError, deadline: float) -> Hashed:
        """One image hashed from its fetch (in a fetching thread of ``fetch_each``)."""
        if isinstance(result, FetchError):
            return Hashed(ImageFacts(url=url, error=f"{result.code}: {result.reason}"))
        if result.status >= 400:
            return Hashed(ImageFacts(url=url, error=f"HTTP {result.status}"))
        with self._hash_lock:
            if time.monotonic() >= deadline:
                return Hashed(ImageFacts(url=url, byte_size=len(result.body),
                                         error=f"deadline: {DEADLINE_PASSED}: fetched, but the item's time ran out before hashing"))
            return self._image_facts(url, result.body)

    def _image_facts(self, url: str, data: bytes) -> Hashed:
        try:
            h = self.hash_image(data)
        except ValueError as err:  # ImageError: broken file, bomb, not an image
            return Hashed(ImageFacts(url=url, byte_size=len(data), error=str(err)))
        hashes = hash_fields(h)
        facts = ImageFacts(url=url, **hashes, width=h.width, height=h.height, format=h.format, byte_size=len(data))
        # An animation is known if any of its sampled frames is (abusers hide a frame in a GIF).
        return Hashed(facts, (hashes, *(hash_fields(frame) for frame in h.frames)))

    def _matched(self, hashed: Sequence[Hashed], hosting_of: Callable[[str], HostingFacts]) -> list[ImageFacts]:
        """A page's hashed images matched against the bank in one call (each image, then each
        of its frames, the first hit wins, as one image at a time), with their hosters."""
        probes = [p for h in hashed for p in h.probes]
        hits = iter(self.match(probes) if probes else [])
        out: list[ImageFacts] = []
        for h in hashed:
            hit = None
            for found in [next(hits) for _ in h.probes]:
                hit = hit or found
            match = None if hit is None else BankMatch(
                entry_id=hit.entry_id, signal=hit.signal, distance=hit.distance, category=hit.category, source=hit.source,
            )
            out.append(h.facts.model_copy(update={"hosting": hosting_of(h.facts.url), "match": match}))
        return out

    def _police_record(self, c: ItemClassified, uow: UnitOfWork, work: ItemWork | None = None) -> PoliceEscalation | None:
        """Known material noticed at a hoster abroad (no partner hotline there): the police's
        record of it (reason ``no_partner``; nothing to release, it is informational). ``work``:
        the item as read in this transaction (else it is read here)."""
        h = c.hosting
        if c.route != "ntd" or h is None or not h.country or h.country.upper() == self.home_country.upper():
            return None
        seen = work if work is not None else uow.items.get(c.item_id)
        if seen is None:
            return None
        return PoliceEscalation(
            escalation_id=f"pol-{c.item_id}-no-partner", item_id=c.item_id, url=c.url,
            images=[i for i in c.images if i.match is not None], hosting=h, first_seen=seen.first_seen,
            last_seen=seen.last_seen, report_ids=uow.items.report_ids(c.item_id), classification=None,
            escalated_at=c.classified_at, reason="no_partner",
        )

    def _outputs(self, c: ItemClassified, uow: UnitOfWork, work: ItemWork | None = None) -> list[Outgoing]:
        out = [Outgoing("items.classified", c)]
        if c.route == "police":
            row = uow.escalations.get(f"pol-{c.item_id}")
            if row is not None:
                out.append(Outgoing("escalations.police", PoliceEscalation.model_validate(row.payload)))
            return out
        notices = takedown_notices(c)
        out += [Outgoing("notices.ntd", n) for n in notices]
        out += [Outgoing("forwards.partner", f) for f in partner_forwards(c, self.partner_names, self.hotline_name)]
        if notices:
            record = self._police_record(c, uow, work)
            if record is not None:
                out.append(Outgoing("escalations.police", record))
        return out
