"""Settings from the environment (all prefixed ``HOTLINE_``), with safe defaults.

No secret has a default: SMTP passwords and partner tokens only ever come from
the environment, so nothing sensitive can be committed by accident.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from hashing.signals import SIGNAL_TYPES, radii

_PDQ, _PHASH = SIGNAL_TYPES["pdq"], SIGNAL_TYPES["phash"]


class Settings(BaseSettings):
    """Every knob an operator can turn. Read once per process via :func:`get_settings`."""

    model_config = SettingsConfigDict(env_prefix="HOTLINE_", extra="ignore")

    database_url: str = "sqlite:///hotline.db"
    kafka_brokers: str | None = None
    topic_prefix: str = ""
    kafka_partitions: int = 3

    smtp_host: str = "127.0.0.1"
    smtp_port: int = 25
    smtp_user: str | None = None
    smtp_password: str | None = None
    smtp_starttls: bool = False
    notice_from: str = "ntd@hotline.invalid"
    # Language of the notice text: "auto" = Dutch for a hoster in NL, English otherwise.
    notice_language: Literal["auto", "nl", "en"] = "auto"
    # Grouping: later notices to one abuse address within this many seconds of the last e-mail
    # to it go out together as one e-mail (services.notify.stage); 0 = every notice at once.
    notice_group_seconds: float = Field(default=0.0, ge=0)
    hotline_name: str = "Hotline"

    home_country: str = "NL"
    hosting_file: Path | None = None
    partners_file: Path | None = None

    allow_private_fetch: bool = False
    fetch_timeout_seconds: float = 10.0
    fetch_max_bytes: int = 20_000_000
    fetch_max_pixels: int = 60_000_000
    fetch_max_images_per_page: int = 50
    fetch_max_redirects: int = 5
    # One item's page and all its images are fetched within this many seconds (connect, TLS,
    # headers, body and every redirect hop included; one URL also within 2 x
    # fetch_timeout_seconds), its images this many at a time (services.classify.fetcher).
    fetch_item_deadline_seconds: float = Field(default=30.0, gt=0)
    fetch_image_concurrency: int = Field(default=4, gt=0)
    user_agent: str = "hotline-classifier/0.1 (+abuse report processing)"

    # Match radii; the defaults are the registry's (hashing.signals), not repeated here.
    pdq_radius: int = Field(default=_PDQ.default_radius, ge=0, le=_PDQ.bits // 2)
    phash_radius: int = Field(default=_PHASH.default_radius, ge=0, le=_PHASH.bits // 2)

    # Forwards and status updates to partner hotlines (services.escalate.forwards): a failed
    # attempt is retried after forward_retry_seconds, doubling per attempt up to
    # forward_retry_max_seconds, for as long as it takes. The dispatcher looks for due attempts
    # every forward_tick_seconds; an attempt not recorded within forward_redispatch_seconds
    # (a crashed process) is made again.
    forward_retry_seconds: float = Field(default=2.0, gt=0)
    forward_retry_max_seconds: float = Field(default=3600.0, gt=0)
    forward_tick_seconds: float = Field(default=1.0, gt=0)
    forward_redispatch_seconds: float = Field(default=300.0, gt=0)
    forward_batch: int = Field(default=100, gt=0)

    # Where the bank matcher's snapshot lives (services.bank.bank): "auto" = ``var/index``
    # next to the SQLite file (or the working directory for other databases);
    # "" or "none" = no snapshot, the matcher is built from the database at start.
    index_dir: str = "auto"

    def radii(self) -> dict[str, int]:
        """The match radius of every hash type: the registry's, with these settings applied."""
        return radii({"pdq": self.pdq_radius, "phash": self.phash_radius})

    def index_path(self) -> Path | None:
        """``index_dir`` resolved: a directory, or None for no snapshot."""
        value = self.index_dir.strip()
        if value.lower() in ("", "none", "off"):
            return None
        if value.lower() != "auto":
            return Path(value)
        if self.database_url.startswith("sqlite"):
            from sqlalchemy.engine import make_url

            database = make_url(self.database_url).database
            if not database or database == ":memory:" or database.startswith("file:"):
                return None
            return Path(database).parent / "var" / "index"
        return Path("var") / "index"

    # After the notice (services.followup): re-check until gone, remind, climb the ladder.
    # The removal norm: content still online this long after its first notice is past its
    # deadline (reminder, ladder, and the monitor's "within the deadline" figures).
    recheck_seconds: float = Field(default=3600.0, gt=0)
    removal_deadline_seconds: float = Field(default=86400.0, gt=0)
    authority_email: str | None = None
    # A "gone" result is confirmed by a second check this long after (one hiccup is no removal).
    recheck_confirm_seconds: float = Field(default=300.0, gt=0)
    # Every re-check is put off by up to this share of the interval, so checks spread out.
    recheck_jitter: float = Field(default=0.1, ge=0, le=1)
    # The steps after the reminder, in order (upstream, registrar, authority; comma-separated).
    ladder: str = "upstream,registrar,authority"
    # Time between one reminder/ladder step and the next.
    ladder_step_seconds: float = Field(default=86400.0, gt=0)
    # At most this many re-checks of one hoster in flight at a time (0 = no cap).
    recheck_per_hoster: int = Field(default=2, ge=0)
    # How often (real seconds) the scheduler looks for due re-checks, and how many per look: at
    # most batch / tick re-checks a second go out (500 / 5 s = 100/s; 100,000 open notices
    # re-checked hourly need 28/s).
    followup_tick_seconds: float = Field(default=5.0, gt=0)
    followup_batch: int = Field(default=500, gt=0)
    # Due re-checks per ``rechecks.due`` message (1: one message per check); the followup stage
    # handles a message's checks in two transactions, fetching them on this many threads.
    followup_checks_per_message: int = Field(default=50, gt=0)
    followup_fetch_workers: int = Field(default=8, gt=0)
    # A dispatched re-check not recorded within this long is dispatched again (lost message).
    recheck_redispatch_seconds: float = Field(default=900.0, gt=0)

    # A notice still ``failed`` (notify keeps retrying) this long after it was first tried shows
    # on the operators' page (HOTLINE_NOTICE_FAILED_ALERT_SECONDS; services/operations).
    notice_failed_alert_seconds: int = 3600

    # The police decide when (services/police, services/escalate/release.py): unset, the takedown
    # of new material waits for the police's release; set, it follows automatically this many
    # seconds after the escalation unless the police put it on hold (HOTLINE_POLICE_HOLD_SECONDS).
    police_hold_seconds: float | None = Field(default=None, gt=0)
    # The hotline's own questions on every assessment (services/assessment/questions.py: id,
    # label, type yes_no|choice|text, required); unset: none (HOTLINE_ASSESSMENT_QUESTIONS_FILE).
    assessment_questions_file: str | None = None
    # Attribution (services.classify.hosting): DNS servers to ask instead of the system's
    # ("127.0.0.1:5353,[::1]:53"; unset = /etc/resolv.conf), the RDAP base URL (unset = no RDAP
    # look-ups: an address no hosting-file network covers is "hoster unknown"; e.g.
    # https://rdap.org, a bootstrap redirector), and how long a DNS or RDAP answer is cached.
    dns_servers: str | None = None
    dns_timeout_seconds: float = Field(default=5.0, gt=0)
    rdap_url: str | None = None
    rdap_timeout_seconds: float = Field(default=5.0, gt=0)
    # After an RDAP outage (timeout, 5xx) RDAP is left alone this long (0 = ask every time).
    rdap_backoff_seconds: float = Field(default=60.0, ge=0)
    hosting_cache_seconds: float = Field(default=43200.0, ge=0)

    # The public form and the API (services/ingest/routes.py, README "The public report form"):
    # the key that seals reporters' e-mail addresses (32 random bytes, URL-safe base64; unset:
    # addresses are not kept and the form does not ask for one), and how many reports one
    # client address may submit per minute (a token bucket per process; 0 switches it off).
    reporter_key: SecretStr | None = None
    report_rate_per_minute: int = Field(default=30, ge=0)
    # Group commit for report intake (hotline/storage/group_commit.py, services/ingest/intake.py):
    # reports arriving together share one transaction and one commit, each answered 202 after
    # it; at most ``intake_batch_max`` a commit. false: one commit per request (the old path).
    intake_group_commit: bool = True
    intake_batch_max: int = Field(default=200, ge=1)
    # uvicorn's per-request access log line (it holds the client's address, which the hotline
    # keeps nowhere else, and costs time on every request): off unless asked for.
    access_log: bool = False
    # Retention of reporter contact details (hotline/storage/contact_retention.py,
    # docs/reliability.md "Privacy"): a sealed address is removed from its report, from the
    # operators' rejection copies and from the embedded bus this many days after it arrived
    # (and from a processed embedded bus message as soon as every consumer has passed it);
    # ``hotline topics create`` sets the same ``retention.ms`` on the topics that carry it.
    # 90 days: a takedown, its reminders and ladder and the police's hold are long over by then,
    # and so is any reason to write back to the reporter. 0 = remove once processed.
    reporter_retention_days: float = Field(default=90.0, ge=0)
    # How often (seconds) the process that runs ingest looks for addresses past retention.
    reporter_purge_tick_seconds: float = Field(default=3600.0, gt=0)
    # The public form's language when the browser's Accept-Language names neither nl nor en.
    form_default_language: Literal["en", "nl"] = "en"
    # Web hardening (hotline/web; docs/reliability.md "Hostile callers"). Request bodies over
    # max_body_bytes are refused with 413 before they are read (HashCheck's route has its own,
    # larger limit: 10,000 hashes plus report URLs).
    max_body_bytes: int = Field(default=2_000_000, gt=0)
    hashcheck_max_body_bytes: int = Field(default=32 * 1024 * 1024, gt=0)
    # Unknown tokens (bearer, cookie, sign-in form) from one client address: after
    # auth_max_failures within auth_lockout_seconds the address gets 429 until the window
    # passes (0 = no lockout); sign-in attempts per address per minute (0 = no limit).
    auth_max_failures: int = Field(default=10, ge=0)
    auth_lockout_seconds: float = Field(default=300.0, gt=0)
    login_per_minute: int = Field(default=20, ge=0)
    # Strict-Transport-Security on every response, not only those served over https (set it
    # when TLS ends at a proxy in front of the app).
    hsts_always: bool = False
    # /metrics: an admin's token, or this one (a scraper's; from the environment only).
    metrics_token: str | None = None
    # HashCheck: account names (comma-separated) that get PDQ/pHash distances; every other
    # hoster gets known / not known only. Requests per minute and hashes per UTC day per
    # account (0 = unlimited).
    hashcheck_trusted: str = ""
    hashcheck_requests_per_minute: int = Field(default=60, ge=0)
    hashcheck_daily_hashes: int = Field(default=2_000_000, ge=0)

    def hashcheck_trusted_names(self) -> frozenset[str]:
        return frozenset(n.strip() for n in self.hashcheck_trusted.split(",") if n.strip())

    # The analyst workspace (services/assessment/queue.py, pages.py). An analyst's claim on an
    # item lasts this long unless renewed (each page load; the page's heartbeat while open).
    assessment_lease_seconds: float = Field(default=600.0, gt=0)
    # An "illegal" decision waits for a second, different analyst before escalation.
    second_analyst: bool = False
    # A reminder to take a break after this many minutes of continuous work on the analyst pages
    # (a pause of assessment_idle_minutes or more starts a new stretch).
    break_reminder_minutes: float = Field(default=50.0, gt=0)
    assessment_idle_minutes: float = Field(default=10.0, gt=0)
    # The keyboard's "record" waits this long for an "undo" before the decision is sent (0: at once).
    undo_seconds: float = Field(default=3.0, ge=0, le=60)
    # Reports from these channels are assessed first (partners and police ahead of the public).
    priority_channels: str = "partner,police"
    # Messages per transaction for the stages that allow it (ingest, notify; hotline.kernel.stage
    # "Batches"), on both runtimes; 1 = one message per transaction as before.
    batch_size: int = Field(default=100, gt=0)
    # Embedded runtime: a batch's transaction takes no more messages after this many seconds
    # (SQLite has one writer; web submissions wait for it).
    batch_max_seconds: float = Field(default=0.25, gt=0)
    # Kafka runtime: messages a stage that allows it (classify; hotline.kernel.stage
    # "Overlapping") works on at once in one process, each in its own transactions, those with
    # the same key one after another; 1 = one at a time as before. Also the embedded runtime's,
    # for a stage in a process of its own (hotline serve's classify child, serve --stage NAME).
    stage_in_flight: int = Field(default=4, gt=0)
    # ... and the e-mails notify has in flight per process (its time is the SMTP conversation
    # and its database round trips, not memory: classify's items hold fetched images, so
    # classify keeps the smaller number). 8 is what brought report -> notice p99 under a
    # second at 50 reports/s on 2 cores (docs/benchmarks.md, issue 13); 1 = one at a time.
    notify_in_flight: int = Field(default=8, gt=0)
    # Kafka runtime: a stage process (serve --stage X) lowers its CPU priority to this nice
    # value at start (hotline/runtime/priority.py), so on a shared host the web process, and
    # PostgreSQL and Kafka, win the CPU during a burst and the burst waits in Kafka; 0 = leave
    # it. Off by default: it is a choice about the other processes on the host.
    stage_nice: int = Field(default=0, ge=0, le=19)

    # Embedded runtime (hotline/runtime/embedded.py "Yielding to intake"): while reports arrive
    # faster than embedded_yield_rate a second, a stage defers its next step, at most
    # embedded_yield_seconds in a row (then it runs one batch and may defer again); 0 = never.
    embedded_yield_seconds: float = Field(default=2.0, ge=0)
    # Embedded runtime on an SQLite file: the stages plain ``hotline serve`` runs in child
    # processes of their own, comma-separated (hotline/runtime/stage_processes.py); "" = every
    # stage in the one process. Classify costs the most per item; notify waits the most (an SMTP
    # conversation and two commits per notice), so each works on several at once in its child.
    embedded_processes: str = "classify,notify"
    embedded_yield_rate: float = Field(default=200.0, ge=0)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
