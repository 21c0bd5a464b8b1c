"""The ``hotline`` command line."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from hotline.config import Settings, get_settings

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

    from schemas.reports import ReportSubmitted


def _system(settings: Settings | None = None, pre_ping: bool = True):  # type: ignore[no-untyped-def]
    from entrypoints.bootstrap import bootstrap
    from hotline.operator_files import OperatorFileError

    try:
        return bootstrap(settings or get_settings(), pre_ping=pre_ping)
    except OperatorFileError as exc:  # the operator's mistake: one clear line, no traceback
        raise click.ClickException(str(exc)) from None


# Loggers kept at WARNING unless ``-v``. httpx and httpcore log every request at INFO: in classify
# and the follow-up that is a line per fetched image URL, the reported material's addresses in the
# log and CPU per image.
QUIET_LOGGERS = ("alembic", "mail.log", "kafka", "aiokafka", "httpx", "httpcore")


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Log more.")
def main(verbose: bool) -> None:
    """hotline: process reports of child sexual abuse material, from intake to takedown."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in QUIET_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose else logging.WARNING)


@main.command()
@click.option("--quiet", is_flag=True, help="Only print the summary.")
def demo(quiet: bool) -> None:
    """Run the whole pipeline embedded on synthetic data and report what happened."""
    from entrypoints.demo import run_demo

    logging.getLogger().setLevel(logging.WARNING)

    sys.exit(run_demo(quiet=quiet))


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--stage", default=None, help="Run one stage only (ingest, classify, notify, escalate, followup, web).")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(min=1),
              help="--stage web on Kafka: web processes sharing the listening socket (one outbox relay).")
def serve(host: str, port: int, stage: str | None, workers: int) -> None:
    """Run the stages and the web app. Without HOTLINE_KAFKA_BROKERS everything runs embedded."""
    from hotline.runtime.malloc import limit_arenas
    from hotline.runtime.priority import lower_priority

    limit_arenas()  # before any thread starts (hotline.runtime.malloc: why)

    settings = get_settings()
    if settings.kafka_brokers and stage not in (None, "web"):
        # Before any thread starts, the import of numpy's OpenBLAS included (an unknown stage
        # name is refused below; it exits at whatever priority).
        lower_priority(settings.stage_nice)
    from entrypoints.bootstrap import STAGE_NAMES

    if workers > 1 and not (settings.kafka_brokers and stage == "web"):
        raise click.BadParameter("more than one worker needs --stage web on Kafka (HOTLINE_KAFKA_BROKERS): "
                                 "the embedded runtime has one web process", param_hint="--workers")
    # A Kafka stage process retries a transaction that fails on a dead connection; the web's
    # requests cannot (hotline.storage.engine.make_engine, "pre_ping").
    system = _system(settings, pre_ping=not (settings.kafka_brokers and stage in STAGE_NAMES))
    if settings.kafka_brokers:
        if stage in STAGE_NAMES:
            from hotline.runtime.kafka import run_stage_worker

            periodic = system.periodic_for((stage,))
            run_stage_worker(settings, system.sessions, system.build_stage(stage), periodic)
            return
        if stage not in (None, "web"):
            raise click.BadParameter(f"unknown stage {stage!r}", param_hint="--stage")
        from hotline.runtime.relay import OutboxRelay

        # One web process: its own commits wake the relay at once, the poll is a fallback. With
        # workers the commits happen in other processes, so the relay here polls briskly (an
        # empty round is one short transaction).
        relay = OutboxRelay(system.sessions, settings.kafka_brokers, settings.topic_prefix,
                            poll_seconds=0.05 if workers > 1 else 0.5)
        uvicorn, create_app = _web_stack()
        relay.start()
        try:
            if workers > 1:
                # uvicorn binds the socket here and spawns the workers, each accepting on it
                # with its own app and group committer (entrypoints.web.create_app_from_environment);
                # this process runs the one relay (and restarts a worker that dies).
                uvicorn.run("entrypoints.web:create_app_from_environment", factory=True, workers=workers,
                            host=host, port=port, log_level="info", access_log=settings.access_log)
            else:
                uvicorn.run(create_app(system), host=host, port=port, log_level="info",
                            access_log=settings.access_log)
        finally:
            relay.stop()
        return
    _serve_embedded(settings, system, host, port, stage)


def _serve_embedded(settings: Any, system: Any, host: str, port: int, stage: str | None) -> None:
    """``hotline serve`` without a broker: the web app and the stages on one database. Plain
    ``serve`` runs the stages of ``HOTLINE_EMBEDDED_PROCESSES`` (classify) in child processes of
    their own and every other stage in this one (``hotline.runtime.stage_processes``: why, and
    why on SQLite only); ``--stage NAME`` runs that stage alone, ``--stage web`` the web app
    alone. On an SQLite file each stage is held by one process at a time (``stage_lock``)."""
    from entrypoints.bootstrap import STAGE_NAMES
    from hotline.runtime import stage_processes as sp
    from hotline.runtime.embedded import EmbeddedRuntime

    if stage not in (None, "web") and stage not in STAGE_NAMES:
        raise click.BadParameter(f"unknown stage {stage!r}", param_hint="--stage")
    try:
        children = sp.child_stage_names(settings.embedded_processes, settings.database_url, STAGE_NAMES) \
            if stage is None else ()
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    names = () if stage == "web" else tuple(n for n in (STAGE_NAMES if stage is None else (stage,))
                                            if n not in children)
    from hotline.runtime.steps import in_flight_of

    stages = system.build_stages(names)
    runtime = EmbeddedRuntime(
        system.sessions,
        stages,
        periodic=system.periodic_for(names),
        batch_size=settings.batch_size,
        batch_max_seconds=settings.batch_max_seconds,
        yield_max_seconds=settings.embedded_yield_seconds,
        # A stage in a process of its own has the interpreter to itself: classify and notify
        # work on several messages at once there (hotline.runtime.embedded); beside the web app
        # and the other stages they would only share the one interpreter more finely.
        in_flight=in_flight_of(stages[0], settings.stage_in_flight) if stage not in (None, "web") else 1,
    )
    app = None
    if stage in (None, "web"):
        from services.ingest.intake import IntakePressure

        uvicorn, create_app = _web_stack()
        app = create_app(system)
        # The stages defer to intake during a burst (hotline.runtime.embedded "Yielding").
        runtime.yield_to = IntakePressure(app.state, settings.embedded_yield_rate)
    elif os.environ.get(sp.FLAG_ENV):
        # A child of plain ``serve``: the parent says when intake is in a burst.
        runtime.yield_to = sp.IntakeFlag(Path(os.environ[sp.FLAG_ENV]), create=False)
    db_file = sp.sqlite_file(settings.database_url)
    spawned = sp.ChildStages(children, db_file, runtime.yield_to) if children and db_file else None
    if app is None:
        # SIGTERM (a service manager's stop, the parent's) ends the stage between two steps.
        signal.signal(signal.SIGTERM, _raise_exit)
    with contextlib.ExitStack() as held:
        if db_file is not None:
            for name in names:
                held.enter_context(sp.stage_lock(db_file, name))
        runtime.start()
        if spawned is not None:
            spawned.start()
        try:
            if app is not None:
                uvicorn.run(app, host=host, port=port, log_level="info", access_log=settings.access_log)
            elif os.environ.get(sp.PARENT_ENV):
                sp.exit_with_parent(int(os.environ[sp.PARENT_ENV]), stop=lambda: None)
            else:
                while True:
                    time.sleep(3600)
        except (KeyboardInterrupt, SystemExit):
            pass
        finally:
            if spawned is not None:
                spawned.stop()
            runtime.stop()


def _raise_exit(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def _web_stack() -> tuple[Any, Any]:
    """uvicorn and ``create_app``, imported only by a process that serves HTTP: the web app
    (FastAPI, Starlette, Jinja, every route module) is ~15 MB of private memory that a stage
    process (``serve --stage classify``) never uses (issue 13: peak RSS per stage process)."""
    import uvicorn

    from entrypoints.web import create_app

    return uvicorn, create_app


@main.command()
def migrate() -> None:
    """Create or upgrade the database schema."""
    from hotline.storage.engine import migrate as run

    run(get_settings().database_url)
    click.echo("database is at the newest schema")


@main.group()
def bank() -> None:
    """The bank of known hashes."""


def _count_lines(path: Path) -> int:
    """Data rows for the progress bar (newlines minus the header; fast: 1 GB/s)."""
    n = 0
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 24):
            n += chunk.count(b"\n")
    return max(n - 1, 0)


@bank.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--category", default="baseline", show_default=True, help="For rows without a category.")
@click.option("--source", default=None, help="For rows without a source (default: the file name).")
@click.option(
    "--errors",
    "errors_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write every refused row (line: column: reason) to this file.",
)
@click.option(
    "--snapshot/--no-snapshot",
    default=None,
    help="Save a fresh index snapshot afterwards (default: when the import was large).",
)
def bank_import(
    file: Path, category: str, source: str | None, errors_file: Path | None, snapshot: bool | None
) -> None:
    """Load known hashes from CSV (md5,sha1,sha256,pdq,phash,category,source; any subset of hashes).

    Good rows are inserted in bulk in one transaction; every bad row is
    reported with its line number, column and reason.
    """
    from tqdm import tqdm

    from hotline.storage.unit_of_work import SqlUnitOfWork
    from services.bank.bank import Bank, import_csv

    settings = get_settings()
    system = _system(settings)
    total = _count_lines(file)
    started = time.perf_counter()
    with (
        system.sessions() as session,
        # Undecodable bytes become surrogates the import refuses row by row ("not UTF-8").
        file.open(newline="", encoding="utf-8-sig", errors="surrogateescape") as fh,
        tqdm(total=total, unit="rows", unit_scale=True, disable=total < 10_000 or not sys.stderr.isatty()) as bar,
    ):
        store = SqlUnitOfWork(session)
        added, errors = import_csv(fh, store, category, source or file.name, progress=bar.update)
        store.commit()
    elapsed = time.perf_counter() - started
    if errors_file is not None:
        errors_file.write_text("".join(f"{e}\n" for e in errors))
    for e in errors[:20]:
        click.echo(f"refused {e}", err=True)
    if len(errors) > 20:
        more = f" (all in {errors_file})" if errors_file else " (use --errors FILE to see them all)"
        click.echo(f"... and {len(errors) - 20} more refused rows{more}", err=True)
    click.echo(f"imported {added} entries in {elapsed:.1f}s, refused {len(errors)} rows")
    index_dir = settings.index_path()
    if index_dir is not None and added and snapshot is not False:
        # Loading applies the import to the existing snapshot and re-saves it when the
        # import was large (or builds the first snapshot); --snapshot forces a save.
        started = time.perf_counter()
        bank_ = Bank.from_settings(settings, system.sessions)
        bank_.load()
        if snapshot:
            bank_.save_snapshot(force=True)
        behind = bank_.state.changes if bank_.state is not None else None
        took = time.perf_counter() - started
        if behind == 0:
            click.echo(f"index snapshot in {index_dir} is up to date ({took:.1f}s)")
        else:
            click.echo(f"index snapshot in {index_dir} is {behind} changes behind (applied at start)")
    sys.exit(1 if errors and not added else 0)


@bank.command("export")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.option("--include-retired", is_flag=True)
def bank_export(output: Path | None, include_retired: bool) -> None:
    """Write the bank as CSV (to stdout by default)."""
    from hotline.storage.unit_of_work import SqlUnitOfWork
    from services.bank.bank import export_csv

    system = _system()
    with system.sessions() as session:
        if output:
            with output.open("w", newline="") as fh:
                n = export_csv(SqlUnitOfWork(session), fh, include_retired)
            click.echo(f"exported {n} entries to {output}", err=True)
        else:
            export_csv(SqlUnitOfWork(session), sys.stdout, include_retired)


@bank.command("retire")
@click.argument("entry_id", type=int)
@click.option("--reason", required=True, help="Why the entry leaves the bank (kept on record).")
def bank_retire(entry_id: int, reason: str) -> None:
    """Retire a bank entry; it stops matching, the reason is kept."""
    from hotline.storage.unit_of_work import SqlUnitOfWork
    from services.bank.bank import retire

    system = _system()
    with system.sessions() as session:
        store = SqlUnitOfWork(session)
        ok = retire(store, entry_id, reason, "cli")
        store.commit()
    if not ok:
        raise click.ClickException(f"no active bank entry {entry_id}")
    click.echo(f"retired entry {entry_id}")


@main.group()
def reports() -> None:
    """Reports."""


def submit_reports(sessions: sessionmaker[Session], messages: list[ReportSubmitted]) -> None:
    """The embedded ``reports import``: the reports and their ``reports.submitted`` messages in
    one transaction, through the outbox (``SqlUnitOfWork.commit``), while the stages may be running."""
    from hotline.kernel.messages import Outgoing
    from hotline.storage.unit_of_work import SqlUnitOfWork

    with sessions() as session:
        uow = SqlUnitOfWork(session)
        for m in messages:
            uow.reports.create(m)
        uow.enqueue(Outgoing("reports.submitted", m) for m in messages)
        uow.commit()


@reports.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def reports_import(file: Path) -> None:
    """Bulk-import reports from CSV (columns: url, and optionally report, description, reporter_email).

    Rows with the same ``report`` value form one report; without that column every row is a
    report. URLs are validated by ingest, which records a reason for every one it refuses.
    """
    from hotline.storage.reporter_address import ReporterSeal, keep_address
    from services.ingest.bulk import read_report_rows

    with file.open(newline="", encoding="utf-8-sig", errors="surrogateescape") as fh:
        messages, rows, errors = read_report_rows(fh)
    for e in errors:
        click.echo(f"refused {e}", err=True)
    if not messages:
        raise click.ClickException(errors[0] if errors else "no rows")
    settings = get_settings()
    # Sealed here, at the edge, like the form's: the topic and the database only see it sealed.
    seal = ReporterSeal(settings.reporter_key.get_secret_value()) if settings.reporter_key else None
    messages = [m.model_copy(update={"reporter_email": keep_address(seal, m.reporter_email)}) for m in messages]
    if settings.kafka_brokers:
        from kafka import KafkaProducer

        producer = KafkaProducer(bootstrap_servers=settings.kafka_brokers, acks="all")
        for m in messages:
            producer.send(settings.topic_prefix + "reports.submitted", key=m.report_id.encode(), value=m.to_bytes())
        producer.flush()
        producer.close()
    else:
        submit_reports(_system(settings).sessions, messages)
    for m in messages:
        click.echo(m.report_id)
    click.echo(f"submitted {len(messages)} report(s) with {rows} URL(s), refused {len(errors)} row(s)", err=True)


@reports.command("seal-addresses")
def reports_seal_addresses() -> None:
    """Seal every reporter address still stored in clear (databases from before addresses were
    sealed); without HOTLINE_REPORTER_KEY, erase them. Sealed ones are left alone, so running
    it again changes nothing. Then the table is rewritten (VACUUM) so no old copy remains;
    backups taken before still hold the clear addresses."""
    from sqlalchemy import select

    from hotline.storage.models import Report
    from hotline.storage.reporter_address import is_sealed, keep_address

    system = _system()
    seal = system.reporter_seal()
    sealed = erased = 0
    with system.sessions() as session:
        for report in session.scalars(select(Report).where(Report.reporter_email.is_not(None))):
            if is_sealed(report.reporter_email):
                continue
            report.reporter_email = keep_address(seal, report.reporter_email)
            sealed, erased = (sealed + 1, erased) if report.reporter_email else (sealed, erased + 1)
        session.commit()
    if sealed or erased:
        # An UPDATE leaves the old row's bytes in free pages (SQLite) or dead tuples
        # (PostgreSQL) until the table is rewritten: rewrite it, so the clear text is gone.
        with system.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            if conn.dialect.name == "sqlite":
                conn.exec_driver_sql("VACUUM")
                conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")  # the old pages may sit in the WAL
            else:
                conn.exec_driver_sql("VACUUM FULL reports")
    click.echo(f"sealed {sealed}, erased {erased} reporter address(es)")


@reports.command("purge-contacts")
@click.option("--days", type=float, default=None,
              help="Retention in days (default: HOTLINE_REPORTER_RETENTION_DAYS).")
def reports_purge_contacts(days: float | None) -> None:
    """Remove reporter addresses older than the retention period from reports, rejection copies
    and bus messages, and those of bus messages every consumer has passed (what the periodic
    task beside ingest does every HOTLINE_REPORTER_PURGE_TICK_SECONDS). Audit-logged with the
    counts. Then the tables are rewritten (VACUUM) so no old copy remains in free pages."""
    from hotline.storage.unit_of_work import SqlUnitOfWork
    from services.ingest.retention import purge

    system = _system()
    retention = system.settings.reporter_retention_days if days is None else days
    if retention < 0:
        raise click.BadParameter("must be 0 or more", param_hint="--days")
    with system.sessions() as session:
        uow = SqlUnitOfWork(session)
        counts = purge(uow, retention, system.clock, system.bus_consumers(), actor="cli")
        uow.commit()
    if counts.total:
        with system.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            if conn.dialect.name == "sqlite":
                conn.exec_driver_sql("VACUUM")
                conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
            else:
                for table in ("reports", "rejections", "bus_messages"):
                    conn.exec_driver_sql(f"VACUUM FULL {table}")
    click.echo(f"removed reporter addresses older than {retention:g} day(s): "
               f"{counts.reports} report(s), {counts.rejections} rejection(s), {counts.bus_messages} bus message(s)")


@reports.command("new-reporter-key")
def reports_new_reporter_key() -> None:
    """Print a fresh key for HOTLINE_REPORTER_KEY (keep it with the other secrets)."""
    from hotline.storage.reporter_address import new_key

    click.echo(new_key())


@bank.group("index")
def bank_index() -> None:
    """The on-disk snapshot of the bank's matching indexes (HOTLINE_INDEX_DIR)."""


@bank_index.command("rebuild")
def bank_index_rebuild() -> None:
    """Build the matcher from the database and save a fresh snapshot."""
    from services.bank.bank import Bank

    settings = get_settings()
    if settings.index_path() is None:
        raise click.ClickException("HOTLINE_INDEX_DIR is set to none: there is nowhere to save a snapshot")
    system = _system(settings)
    bank_ = Bank.from_settings(settings, system.sessions)
    started = time.perf_counter()
    bank_.rebuild(save=False)
    built = time.perf_counter() - started
    path = bank_.save_snapshot(force=True)
    if path is None:
        raise click.ClickException("another process is writing a snapshot right now; try again")
    click.echo(
        f"snapshot of {len(bank_.matcher)} entries written to {path} "
        f"(built in {built:.1f}s, saved in {time.perf_counter() - started - built:.1f}s)"
    )


@bank_index.command("status")
def bank_index_status() -> None:
    """Show the snapshot and how far the database has moved since."""
    import json

    from sqlalchemy import func, select

    from hashing.snapshot import SnapshotError, current_snapshot, read_manifest
    from hotline.storage.models import BankEntry

    settings = get_settings()
    index_dir = settings.index_path()
    if index_dir is None:
        raise click.ClickException("HOTLINE_INDEX_DIR is set to none")
    path = current_snapshot(index_dir)
    if path is None:
        raise click.ClickException(f"no snapshot in {index_dir} (run: hotline bank index rebuild)")
    try:
        manifest = read_manifest(path)
    except SnapshotError as exc:
        raise click.ClickException(str(exc)) from exc
    system = _system(settings)
    info = manifest["info"]
    with system.sessions() as session:
        since = session.scalar(select(func.count(BankEntry.id)).where(BankEntry.id > int(info["max_id"])))
    status = {
        "path": str(path),
        "entries": manifest["entries"],
        "live": manifest["live"],
        "max_id": info["max_id"],
        "rows_added_since": int(since or 0),
        "database": info["database"],
    }
    click.echo(json.dumps(status, indent=2))


@main.group()
def users() -> None:
    """Accounts and API tokens."""


@users.command("add")
@click.argument("name")
@click.option("--role", required=True, type=click.Choice(["admin", "analyst", "police", "hoster", "partner", "senior"]))
@click.option("--country", default=None, help="A partner account's country (ISO 3166-1 alpha-2, e.g. DE); "
              "required for --role partner, refused for other roles.")
def users_add(name: str, role: str, country: str | None) -> None:
    """Create an account and print its API token (shown only once)."""
    import re

    from hotline.storage.unit_of_work import SqlUnitOfWork
    from hotline.web.auth import new_token

    if role == "partner":
        if not country or not re.fullmatch(r"[A-Za-z]{2}", country):
            raise click.BadParameter("a partner account names its country: --country DE (two letters)",
                                     param_hint="--country")
        country = country.upper()
    elif country:
        raise click.BadParameter(f"only partner accounts have a country, not {role} accounts", param_hint="--country")
    system = _system()
    token = new_token()
    with system.sessions() as session:
        store = SqlUnitOfWork(session)
        if store.users.by_name(name) is not None:
            raise click.ClickException(f"a user named {name!r} already exists")
        store.users.add(name, role, token, country)
        store.audit.append("cli", "user_added", name, f"{role} {country}" if country else role)
        store.commit()
    click.echo(token)


@main.command()
@click.option("--year", required=True, type=click.IntRange(2000, 9998), help="Calendar year (UTC).")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
def stats(year: int, fmt: str) -> None:
    """The annual statistics of YEAR: reports per channel and month, share illegal, new vs known,
    hosting countries, forwards per partner, police escalations, time to removal."""
    import json

    from hotline.kernel.clock import now
    from services.monitor.annual import annual, as_text
    from services.monitor.queries import annual_rows

    settings = get_settings()
    system = _system(settings)
    try:
        with system.sessions() as session:
            figures = annual(annual_rows(session, year), now(), settings.removal_deadline_seconds)
    finally:
        system.close()
    click.echo(json.dumps(figures, indent=2) if fmt == "json" else as_text(figures), nl=fmt == "json")


@main.group()
def police() -> None:
    """The police liaison's view."""


@police.command("feed")
@click.option("--follow", is_flag=True, help="Keep waiting for new escalations.")
@click.option("--from-offset", "from_offset", default=None,
              help="Embedded: skip the first N escalations. Kafka: N for every partition, or P:N[,P:N].")
@click.option("--since", default=None, help="Only escalations from this ISO 8601 time on (UTC if no zone).")
def police_feed(follow: bool, from_offset: str | None, since: str | None) -> None:
    """Print every escalations.police message so far as JSON lines."""
    from entrypoints.police_feed import feed, parse_offsets, parse_time

    try:
        parse_offsets(from_offset)
        start = parse_time(since) if since else None
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    try:
        for line in feed(get_settings(), follow=follow, from_offset=from_offset, since=start):
            click.echo(line)
            sys.stdout.flush()
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc


@police.command("export")
@click.option("--from", "start", required=True, help="Start of the period (ISO 8601, inclusive).")
@click.option("--to", "end", required=True, help="End of the period (ISO 8601, exclusive).")
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default="csv", show_default=True)
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write here instead of standard output.")
def police_export(start: str, end: str, fmt: str, output: Path | None) -> None:
    """A period's escalations with their current state and the police's actions."""
    import json

    from entrypoints.police_feed import export_rows, parse_time, to_csv

    try:
        begin, until = parse_time(start), parse_time(end)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    rows = export_rows(get_settings(), begin, until)
    text = to_csv(rows) if fmt == "csv" else json.dumps(rows, indent=2) + "\n"
    if output is None:
        click.echo(text, nl=False)
    else:
        output.write_text(text)
        click.echo(f"{len(rows)} escalation(s) written to {output}", err=True)


@main.group()
def partners() -> None:
    """The partner hotlines of HOTLINE_PARTNERS_FILE."""


def _partner_directory():  # type: ignore[no-untyped-def]
    from hotline.operator_files import OperatorFileError
    from services.escalate.partners import PartnerDirectory

    try:
        return PartnerDirectory.from_file(get_settings().partners_file)
    except OperatorFileError as exc:
        raise click.ClickException(str(exc)) from None


@partners.command("list")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
def partners_list(fmt: str) -> None:
    """Each partner: country, name, endpoint, whether its token variable is set, status endpoint."""
    import json

    rows = [{"country": c, "name": p.name, "endpoint": p.endpoint, "token_env": p.token_env,
             "token_set": p.token_set(), "status_endpoint": p.status_endpoint}
            for c, p in sorted(_partner_directory().by_country.items())]
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no partner hotlines (HOTLINE_PARTNERS_FILE is unset or lists none)")
        return
    for r in rows:
        token = "-" if not r["token_env"] else f"{r['token_env']} ({'set' if r['token_set'] else 'NOT SET'})"
        click.echo(f"{r['country']}  {r['name']}\n    endpoint:        {r['endpoint']}\n    token:           {token}"
                   f"\n    status endpoint: {r['status_endpoint'] or '-'}")


@partners.command("check")
@click.option("--timeout", default=10.0, show_default=True, type=float, help="Seconds per request.")
def partners_check(timeout: float) -> None:
    """Reachability and credentials of every partner endpoint, without sending a report: an
    authenticated OPTIONS request. ok = the server answered and took the token (any answer but
    401/403/5xx); credentials_refused = 401/403; unreachable = no answer, timeout or 5xx;
    not_configured = the token variable is unset. Exits 1 when any is not ok."""
    from services.escalate.partners import HttpPartnerGateway

    gateway = HttpPartnerGateway(timeout=timeout)
    directory = _partner_directory()
    if not directory.by_country:
        raise click.ClickException("no partner hotlines to check (HOTLINE_PARTNERS_FILE is unset or lists none)")
    failed = 0
    for country, partner in sorted(directory.by_country.items()):
        urls = [partner.endpoint] + ([partner.status_endpoint] if partner.status_endpoint else [])
        for url in urls:
            result = gateway.check(partner, url)
            failed += not result.ok
            click.echo(f"{country}  {partner.name}  {url}  {result.outcome}  ({result.detail})")
    if failed:
        click.echo(f"{failed} endpoint(s) failed the check", err=True)
        sys.exit(1)
    click.echo("every partner endpoint is reachable and takes its credentials")


@main.group()
def schemas() -> None:
    """JSON Schemas of the topic messages."""


@schemas.command("export")
def schemas_export() -> None:
    from schemas.export import export

    for path in export():
        click.echo(str(path))


@schemas.command("check")
def schemas_check() -> None:
    """Fail when schemas/json is out of date with the models."""
    from schemas.export import stale

    bad = stale()
    if bad:
        raise click.ClickException("out of date: " + ", ".join(bad) + " (run: hotline schemas export)")
    click.echo("schemas/json is up to date")


@main.group()
def topics() -> None:
    """Kafka topics."""


@topics.command("create")
def topics_create() -> None:
    """Create every topic of the pipeline on the configured broker (idempotent)."""
    from hotline.runtime.kafka import create_topics

    s = get_settings()
    if not s.kafka_brokers:
        raise click.ClickException("HOTLINE_KAFKA_BROKERS is not set")
    create_topics(s.kafka_brokers, s.topic_prefix, s.kafka_partitions,
                  contact_retention_days=s.reporter_retention_days)
    click.echo("topics ready")


@main.command("audit-verify")
def audit_verify() -> None:
    """Check the hash chain of the audit log."""
    from hotline.storage.unit_of_work import SqlUnitOfWork

    system = _system()
    with system.sessions() as session:
        bad = SqlUnitOfWork(session).audit.verify()
    if bad:
        raise click.ClickException(f"audit log rows fail verification: {bad[:20]}")
    click.echo("audit log chain intact")


if __name__ == "__main__":
    main()
