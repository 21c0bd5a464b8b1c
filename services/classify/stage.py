"""Classify: fetch an item's URL, hash every image, match against the bank, find the hoster,
and route it (NTD, analyst assessment, partner forward, or closed as offline).

Image bytes live only in memory for the moment it takes to hash them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import urlsplit

from hashing.image import FrameHashes, ImageHashes
from hashing.matcher import Hit
from hashing.signals import SIGNAL_TYPES
from hotline.kernel.messages import InvalidMessage, Outgoing
from hotline.kernel.ports import UnitOfWork
from hotline.kernel.stage import Result, SideEffect
from hotline.kernel.states import ItemState
from schemas import Message
from schemas.facts import BankMatch, HostingFacts, ImageFacts
from schemas.items import ItemAccepted, ItemClassified
from schemas.notices import PartnerForward, PoliceEscalation, TakedownNotice
from services.classify.fetcher import Fetched, Fetcher, FetchError
from services.classify.hosting import HostingResolver
from services.classify.page import image_urls
from services.classify.routing import decide_route
from services.partners.logic import relookup_ids, relookups

ROUTE_STATE = {
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
MatchFn = Callable[..., Hit | None]

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


def takedown_notice(
    c: ItemClassified, notice_id: str | None = None, abuse_email: str | None = None
) -> TakedownNotice | None:
    """The takedown notice an item's classification calls for, or None (not routed to an NTD,
    or no abuse contact). Rebuilt from the stored classification it is the same notice every
    time (operators resend it: ``services.operations``); ``notice_id`` and ``abuse_email``
    name another notice of the same item to another address. ``created_at`` is when classify
    saw the content."""
    hosting: HostingFacts | None = c.hosting
    if c.route != "ntd" or hosting is None or not (abuse_email or hosting.abuse):
        return None
    return TakedownNotice(
        notice_id=notice_id or f"ntd-{c.item_id}",
        item_id=c.item_id,
        url=c.url,
        hoster=hosting.hoster or hosting.host,
        abuse_email=abuse_email or hosting.abuse or "",
        country=hosting.country,
        images=[i for i in c.images if i.match is not None],
        hosting=hosting,
        created_at=c.classified_at,
    )


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

    name: ClassVar[str] = "classify"
    inputs: ClassVar[tuple[str, ...]] = ("items.accepted",)

    def handle(self, topic: str, message: Message, uow: UnitOfWork) -> Result:
        assert isinstance(message, ItemAccepted)
        item = uow.items.get(message.item_id)
        if item is None:
            raise InvalidMessage("unknown_item", f"item {message.item_id} was never accepted by ingest")
        if item.classification is not None:
            # Redelivery after a crash: publish the same results again (notify and escalate
            # deduplicate by notice/forward id), do no new work.
            return self._outputs(ItemClassified.model_validate(item.classification), uow)
        # Fetching and hashing is the slow part: it runs outside any transaction.
        item_id, url = item.id, item.url
        return SideEffect(
            act=lambda: self.classify(item_id, url),
            done=lambda u, classified: self._record(u, item_id, classified),
            failed=_reraise,
        )

    def _record(self, uow: UnitOfWork, item_id: str, classified: ItemClassified) -> list[Outgoing]:
        item = uow.items.get(item_id)
        assert item is not None
        if item.classification is not None:  # another worker classified it meanwhile
            return self._outputs(ItemClassified.model_validate(item.classification), uow)
        item.classification = classified.model_dump(mode="json")
        if classified.hosting:
            item.country = classified.hosting.country
            item.hoster = classified.hosting.hoster
        uow.items.set_state(item, ROUTE_STATE[classified.route], classified.reason, self.name)
        record = self._police_record(classified, uow)
        if record is not None:
            notice_id, _ = relookup_ids(item_id, relookups(uow, item_id))
            uow.escalations.add_released(record.escalation_id, item_id, record.model_dump(mode="json"), self.name,
                                         f"takedown notice {notice_id} to {classified.hosting.abuse if classified.hosting else ''}")
        return self._outputs(classified, uow)

    def classify(self, item_id: str, url: str) -> ItemClassified:
        host = urlsplit(url).hostname or ""  # "[fd00::1]" without a port has no ":port" to cut
        hosting = self.hosting.facts(host)
        online = True
        offline_reason = ""
        status: int | None = None
        content_type: str | None = None
        images: list[ImageFacts] = []
        try:
            page = self.fetcher.get(url)
            status, content_type = page.status, page.content_type
            if page.status >= 400:
                online, offline_reason = False, f"the URL answered HTTP {page.status}: content is not (or no longer) online"
            elif looks_like_image(page):
                images.append(self._image_facts(url, page.body))
            elif "html" in page.content_type:
                html = page.body.decode("utf-8", "replace")
                for img_url in image_urls(html, page.final_url, self.max_images):
                    images.append(self._fetch_image(img_url))
        except FetchError as err:
            online, offline_reason = False, f"could not fetch the URL ({err.code}): {err.reason}"
        known = any(i.match is not None and not is_weak(i.match) for i in images)
        weak = any(i.match is not None and is_weak(i.match) for i in images)
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
        )

    def _fetch_image(self, url: str) -> ImageFacts:
        try:
            fetched = self.fetcher.get(url)
        except FetchError as err:
            return ImageFacts(url=url, error=f"{err.code}: {err.reason}")
        if fetched.status >= 400:
            return ImageFacts(url=url, error=f"HTTP {fetched.status}")
        return self._image_facts(url, fetched.body)

    def _image_facts(self, url: str, data: bytes) -> ImageFacts:
        try:
            h = self.hash_image(data)
        except ValueError as err:  # ImageError: broken file, bomb, not an image
            return ImageFacts(url=url, byte_size=len(data), error=str(err))
        hashes = hash_fields(h)
        hit = self.match(**hashes)
        # An animation is known if any of its sampled frames is (abusers hide a frame in a GIF).
        for frame in h.frames:
            if hit is not None:
                break
            hit = self.match(**hash_fields(frame))
        match = None
        if hit is not None:
            match = BankMatch(
                entry_id=hit.entry_id,
                signal=hit.signal,
                distance=hit.distance,
                category=hit.category,
                source=hit.source,
            )
        return ImageFacts(
            url=url,
            **hashes,
            width=h.width,
            height=h.height,
            format=h.format,
            byte_size=len(data),
            match=match,
        )

    def _police_record(self, c: ItemClassified, uow: UnitOfWork) -> PoliceEscalation | None:
        """Known material noticed at a hoster abroad (no partner hotline there): the police's
        record of it (reason ``no_partner``; nothing to release, it is informational)."""
        h = c.hosting
        if c.route != "ntd" or h is None or not h.country or h.country.upper() == self.home_country.upper():
            return None
        item = uow.items.get(c.item_id)
        if item is None:
            return None
        return PoliceEscalation(
            escalation_id=f"pol-{c.item_id}-no-partner", item_id=c.item_id, url=c.url,
            images=[i for i in c.images if i.match is not None], hosting=h, first_seen=item.first_seen,
            last_seen=item.last_seen, report_ids=uow.items.report_ids(c.item_id), classification=None,
            escalated_at=c.classified_at, reason="no_partner",
        )

    def _outputs(self, c: ItemClassified, uow: UnitOfWork) -> list[Outgoing]:
        out = [Outgoing("items.classified", c)]
        hosting: HostingFacts | None = c.hosting
        # A new lookup after a partner said the content moved (MO) gets ids of its own.
        notice_id, forward_id = relookup_ids(c.item_id, relookups(uow, c.item_id))
        notice = takedown_notice(c, notice_id)
        if notice is not None:
            out.append(Outgoing("notices.ntd", notice))
            record = self._police_record(c, uow)
            if record is not None:
                out.append(Outgoing("escalations.police", record))
        elif c.route == "forward" and hosting and hosting.country:
            out.append(
                Outgoing(
                    "forwards.partner",
                    PartnerForward(
                        forward_id=forward_id,
                        item_id=c.item_id,
                        url=c.url,
                        country=hosting.country,
                        partner_name=self.partner_names.get(hosting.country, ""),
                        images=[i for i in c.images if i.match is not None],
                        hosting=hosting,
                        from_hotline=self.hotline_name,
                    ),
                )
            )
        return out
