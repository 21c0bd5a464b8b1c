"""Composition root: builds the real adapters from settings and hands them to the stages.

Everything that reads configuration or opens connections happens here, once;
stage code only sees the small interfaces it needs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from hashing.image import hash_image
from hotline.config import Settings
from hotline.kernel.clock import CURRENT, Clock
from hotline.kernel.stage import Periodic, Stage
from hotline.storage.engine import make_engine, make_sessionmaker, migrate
from hotline.storage.hosting_cache import SqlHostingCache
from hotline.storage.reporter_address import ReporterSeal
from services.bank.bank import Bank
from services.classify.fetcher import Fetcher, FetchPolicy
from services.classify.hosting import (
    DnsResolver,
    HostingDirectory,
    HostingResolver,
    Resolver,
    parse_nameservers,
)
from services.classify.rdap import RdapClient
from services.classify.stage import ClassifyStage
from services.escalate.partners import HttpPartnerGateway, PartnerDirectory, PartnerGateway

# The other stages' modules are imported where they are built: a process runs one stage
# (``serve --stage classify``) and should not carry the others' code (notify's XARF pulls in
# jsonschema, ...; issue 13: peak RSS per stage process).
if TYPE_CHECKING:
    from services.escalate.forwards import DeliveryDispatcher
    from services.escalate.hold_timer import HoldTimer
    from services.followup.logic import Policy
    from services.followup.scheduler import FollowupScheduler
    from services.ingest.retention import ContactPurge
    from services.notify.grouper import NoticeGrouper
    from services.notify.mailer import Mailer, SmtpMailer

STAGE_NAMES = ("ingest", "classify", "notify", "escalate", "followup")


@dataclass
class System:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    bank: Bank
    hosting: HostingResolver
    partners: PartnerDirectory
    overrides: dict[str, Any] = field(default_factory=dict)
    web_sessions: sessionmaker[Session] | None = None
    # The SMTP mailers built here keep idle connections open for reuse; ``close`` hangs them up.
    _mailers: list[SmtpMailer] = field(default_factory=list, init=False, repr=False)

    def close(self) -> None:
        """Release every database and SMTP connection this system opened."""
        for mailer in self._mailers:
            mailer.close()
        self.engine.dispose()
        if self.web_sessions is not None:
            bind = self.web_sessions.kw.get("bind")
            if bind is not None:
                bind.dispose()

    def request_sessions(self) -> sessionmaker[Session]:
        """Sessions for HTTP requests (see ``make_engine(immediate=True)``)."""
        return self.web_sessions or self.sessions

    def operator_hosts(self) -> frozenset[str]:
        """Host names in the operator's hosting file: intake accepts them although they are not
        under a public suffix (``services.ingest.hosts``)."""
        return frozenset(self.hosting.directory.hosts)

    def reporter_seal(self) -> ReporterSeal | None:
        """What seals reporters' e-mail addresses (``HOTLINE_REPORTER_KEY``); None without a
        key: then no address is kept (``hotline.storage.reporter_address``)."""
        key = self.settings.reporter_key
        return ReporterSeal(key.get_secret_value()) if key is not None else None

    def build_fetcher(self) -> Fetcher:
        """The guarded fetcher with the configured policy. Classify and the analyst's live image
        view share it, so both refuse exactly the same addresses and resolve names alike."""
        s = self.settings
        return Fetcher(
            FetchPolicy(
                allow_private=s.allow_private_fetch,
                timeout_seconds=s.fetch_timeout_seconds,
                max_bytes=s.fetch_max_bytes,
                max_redirects=s.fetch_max_redirects,
                user_agent=s.user_agent,
            ),
            resolve=self.hosting.addresses,
            transport=self.overrides.get("fetch_transport"),
        )

    @property
    def clock(self) -> Clock:
        """The clock of the follow-up (an override for tests), else whatever is installed."""
        clock: Clock = self.overrides.get("clock") or CURRENT
        return clock

    def followup_policy(self) -> Policy:
        from services.followup.logic import Policy

        s = self.settings
        return Policy(
            recheck_seconds=s.recheck_seconds,
            deadline_seconds=s.removal_deadline_seconds,
            confirm_seconds=s.recheck_confirm_seconds,
            jitter=s.recheck_jitter,
            ladder=Policy.parse_ladder(s.ladder),
            ladder_step_seconds=s.ladder_step_seconds,
        )

    def build_scheduler(self) -> FollowupScheduler:
        """The follow-up scheduler (``services.followup.scheduler``), a periodic task of the runtimes."""
        from services.followup.scheduler import FollowupScheduler

        s = self.settings
        return FollowupScheduler(
            policy=self.followup_policy(),
            clock=self.clock,
            batch=s.followup_batch,
            per_hoster=s.recheck_per_hoster,
            redispatch_seconds=s.recheck_redispatch_seconds,
            interval_seconds=s.followup_tick_seconds,
            checks_per_message=s.followup_checks_per_message,
        )

    def build_notice_grouper(self) -> NoticeGrouper:
        """The notice grouper (``services.notify.grouper``), a periodic task beside notify."""
        from services.notify.grouper import NoticeGrouper

        s = self.settings
        return NoticeGrouper(
            clock=self.clock,
            batch=s.followup_batch,
            interval_seconds=min(s.followup_tick_seconds, max(s.notice_group_seconds, 0.05)),
        )

    def build_delivery_dispatcher(self) -> DeliveryDispatcher:
        """Publishes due forwards and partner status updates again (``services.escalate.forwards``),
        a periodic task beside escalate."""
        from services.escalate.forwards import DeliveryDispatcher

        s = self.settings
        return DeliveryDispatcher(clock=self.clock, batch=s.forward_batch,
                                  redispatch_seconds=s.forward_redispatch_seconds,
                                  interval_seconds=s.forward_tick_seconds)

    def partner_gateway(self) -> HttpPartnerGateway:
        """The HTTP gateway to partner hotlines (also used by ``hotline partners check``)."""
        return HttpPartnerGateway(transport=self.overrides.get("partner_transport"))

    def periodic_for(self, names: tuple[str, ...]) -> list[Periodic]:
        """The periodic tasks that go with the stages ``names`` run in one process: the
        follow-up scheduler with followup, the notice grouper with notify (when grouping is on)."""
        tasks: list[Periodic] = []
        if "followup" in names:
            tasks.append(self.build_scheduler())
        if "notify" in names and self.settings.notice_group_seconds > 0:
            tasks.append(self.build_notice_grouper())
        if "escalate" in names:
            tasks.append(self.build_hold_timer())
            tasks.append(self.build_delivery_dispatcher())
        if "ingest" in names:
            tasks.append(self.build_contact_purge())
        return tasks

    def bus_consumers(self) -> dict[str, tuple[str, ...]] | None:
        """topic -> the embedded stages that read it (every stage, wherever it runs), for the
        contact purge; None on Kafka, where ``bus_messages`` is only the outbox."""
        if self.settings.kafka_brokers:
            return None
        from services.escalate.stage import EscalateStage
        from services.followup.stage import FollowupStage
        from services.ingest.stage import IngestStage
        from services.notify.stage import NotifyStage

        classes: dict[str, Any] = {"ingest": IngestStage, "classify": ClassifyStage, "notify": NotifyStage,
                   "escalate": EscalateStage, "followup": FollowupStage}
        out: dict[str, tuple[str, ...]] = {}
        for name in STAGE_NAMES:
            for topic in classes[name].inputs:
                out[topic] = (*out.get(topic, ()), name)
        return out

    def build_contact_purge(self) -> ContactPurge:
        """The contact purge (``services.ingest.retention``), a periodic task beside ingest:
        reporter addresses past ``HOTLINE_REPORTER_RETENTION_DAYS`` and those of consumed bus
        messages are removed."""
        from services.ingest.retention import ContactPurge

        s = self.settings
        return ContactPurge(retention_days=s.reporter_retention_days,
                            interval_seconds=s.reporter_purge_tick_seconds,
                            clock=self.clock, consumers=self.bus_consumers())

    def build_hold_timer(self) -> HoldTimer:
        """The hold timer (``services.escalate.hold_timer``), a periodic task beside escalate. It
        runs even with ``HOTLINE_POLICE_HOLD_SECONDS`` unset: escalations made while it was set
        keep their due time. It looks a few times per hold time (at most every follow-up tick)."""
        from services.escalate.hold_timer import HoldTimer

        s = self.settings
        interval = s.followup_tick_seconds
        if s.police_hold_seconds:
            interval = min(interval, max(s.police_hold_seconds / 4, 0.1))
        return HoldTimer(clock=self.clock, batch=s.followup_batch, interval_seconds=interval)

    def _mailer(self) -> Mailer:
        from services.notify.mailer import SmtpMailer

        s = self.settings
        override: Mailer | None = self.overrides.get("mailer")
        if override is not None:
            return override
        mailer = SmtpMailer(s.smtp_host, s.smtp_port, s.smtp_user, s.smtp_password, s.smtp_starttls)
        self._mailers.append(mailer)
        return mailer

    def build_stage(self, name: str) -> Stage:
        s = self.settings
        if name == "ingest":
            from services.ingest.stage import IngestStage

            return IngestStage(operator_hosts=self.operator_hosts(), reporter_seal=self.reporter_seal())
        if name == "classify":
            fetcher = self.build_fetcher()
            max_pixels = s.fetch_max_pixels
            return ClassifyStage(
                fetcher=fetcher,
                hash_image=lambda data: hash_image(data, max_pixels=max_pixels),
                match=self.bank.match_batch,
                hosting=self.hosting,
                partner_names=self.partners.names(),
                home_country=s.home_country.upper(),
                max_images=s.fetch_max_images_per_page,
                hotline_name=s.hotline_name,
                item_deadline_seconds=s.fetch_item_deadline_seconds,
                image_concurrency=s.fetch_image_concurrency,
            )
        if name == "notify":
            from services.notify.stage import NotifyStage

            return NotifyStage(mailer=self._mailer(), sender=s.notice_from, hotline_name=s.hotline_name,
                               notice_language=s.notice_language, group_seconds=s.notice_group_seconds,
                               in_flight=s.notify_in_flight)
        if name == "followup":
            from services.followup.mail import Contacts
            from services.followup.stage import FollowupStage

            max_pixels = s.fetch_max_pixels
            return FollowupStage(
                fetcher=self.build_fetcher(),
                hash_image=lambda data: hash_image(data, max_pixels=max_pixels),
                mailer=self._mailer(),
                sender=s.notice_from,
                policy=self.followup_policy(),
                contacts=Contacts(authority_email=s.authority_email),
                clock=self.clock,
                hotline_name=s.hotline_name,
                max_images=s.fetch_max_images_per_page,
                pdq_radius=s.pdq_radius,
                hosting=self.hosting,
                home_country=s.home_country.upper(),
                partner_names=self.partners.names(),
                per_hoster=s.recheck_per_hoster,
                workers=s.followup_fetch_workers,
                item_deadline_seconds=s.fetch_item_deadline_seconds,
                image_concurrency=s.fetch_image_concurrency,
            )
        if name == "escalate":
            from services.escalate.forwards import Backoff
            from services.escalate.stage import EscalateStage

            gateway: PartnerGateway = self.overrides.get("partner_gateway") or HttpPartnerGateway(
                transport=self.overrides.get("partner_transport")
            )
            return EscalateStage(
                partners=self.partners,
                gateway=gateway,
                backoff=Backoff(s.forward_retry_seconds, s.forward_retry_max_seconds),
                lease_seconds=s.forward_redispatch_seconds,
                clock=self.clock,
                home_country=s.home_country.upper(),
                hotline_name=s.hotline_name,
            )
        raise ValueError(f"unknown stage {name!r}; choose from {', '.join(STAGE_NAMES)}")

    def build_stages(self, names: tuple[str, ...] = STAGE_NAMES) -> list[Stage]:
        return [self.build_stage(n) for n in names]


def bootstrap(
    settings: Settings,
    *,
    run_migrations: bool = True,
    dns: Resolver | None = None,
    pre_ping: bool = True,
    **overrides: Any,
) -> System:
    """The system on ``settings``. ``pre_ping``: test a pooled PostgreSQL connection before each
    transaction (``hotline.storage.engine.make_engine``: only a Kafka stage process, which
    retries, goes without)."""
    if run_migrations:
        migrate(settings.database_url)
    engine = make_engine(settings.database_url, pre_ping=pre_ping)
    sessions = make_sessionmaker(engine)
    bank = Bank.from_settings(settings, sessions)
    hosting = build_hosting(settings, sessions, dns, overrides)
    partners = PartnerDirectory.from_file(settings.partners_file)
    web_sessions = None
    if settings.database_url.startswith("sqlite"):
        web_sessions = make_sessionmaker(make_engine(settings.database_url, immediate=True))
    system = System(settings, engine, sessions, bank, hosting, partners, overrides, web_sessions)
    system.reporter_seal()  # a malformed HOTLINE_REPORTER_KEY stops the start, not the first report
    return system




def build_hosting(
    settings: Settings, sessions: sessionmaker[Session], dns: Resolver | None, overrides: dict[str, Any]
) -> HostingResolver:
    """The hosting resolver: the hosting file, DNS (``HOTLINE_DNS_SERVERS`` or the system's),
    RDAP when ``HOTLINE_RDAP_URL`` is set, and the ``hosting_cache`` table for its answers."""
    s = settings
    if dns is None:
        servers = parse_nameservers(s.dns_servers) if s.dns_servers else None
        dns = DnsResolver(servers, s.dns_timeout_seconds)
    rdap = RdapClient(s.rdap_url, s.rdap_timeout_seconds, transport=overrides.get("rdap_transport")) if s.rdap_url else None
    clock: Clock = overrides.get("clock") or CURRENT
    return HostingResolver(
        HostingDirectory.from_file(s.hosting_file), dns, rdap=rdap,
        cache=SqlHostingCache(sessions, clock) if s.hosting_cache_seconds > 0 else None,
        ttl_seconds=s.hosting_cache_seconds, clock=clock, rdap_backoff_seconds=s.rdap_backoff_seconds,
    )
