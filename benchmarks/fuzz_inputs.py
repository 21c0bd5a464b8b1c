"""Fuzz the inputs that do not come over HTTP: every topic's messages (fed to every stage that
reads the topic), the operator's YAML files and the CSV imports.

    python -m benchmarks.fuzz_inputs                 # 100,000 cases in all, spread over the targets
    python -m benchmarks.fuzz_inputs --cases 5000    # fewer
    python -m benchmarks.fuzz_inputs --only stage:   # targets whose name starts with "stage:"

Targets and what counts as a failure or a crash:

- ``stage:<stage>:<topic>``: one message, as bytes, through ``StepRunner`` (what both runtimes
  run) on SQLite in a temporary directory, side effects against loopback stand-ins (mail that
  is accepted, partners that answer 202, fetches that get 404, no DNS). Messages are valid
  models generated from the topic's JSON schema, the same mutated (a field removed, of the
  wrong type, a huge string, control characters, NUL, lone surrogates, extra fields) and
  random JSON or bytes. A crash is any exception other than a requested retry
  (``RetryRequested``); a failure is an invalid message that did not become a
  ``reports.rejected`` with a reason, or a case that took longer than ``STUCK_SECONDS``.
- ``decode:<topic>``: topics no stage reads (``reports.rejected``): decoding raises only
  ``InvalidMessage``.
- ``hosting-file``, ``partners-file``: YAML documents (valid ones, mutated, random, broken
  YAML) through the loaders ``hotline serve`` uses at start; only ``OperatorFileError`` (one
  line naming the file and the problem) may come out.
- ``reports-csv`` (``services.ingest.bulk.read_report_rows``) and ``bank-csv``
  (``services.bank.bank.import_csv``): random CSV text (also undecodable bytes as the CLI reads
  them, fields over the csv module's limit); they must return, every refused row with a reason,
  every accepted report a valid message.

It prints cases, failures and crashes per target, with the first examples, and exits 1 when
there was any. ``tests/unit/test_fuzz_inputs.py`` runs a small derandomized sample.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

STUCK_SECONDS = 10.0
EXAMPLES = 3  # examples kept per target and kind

# -- strategies -----------------------------------------------------------------------------

NASTY_TEXT = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.characters(codec="utf-8", categories=["Cc", "Cf", "Zs", "Zl", "Zp"]), max_size=40),
    st.sampled_from(["", " ", "\x00", "a\x00b", "\ud800", "\u202e", "../../etc/passwd", "null", "NaN",
                     "http://", "http://127.0.0.1:9999\\@evil.test/x", "%FF%FE", "'; DROP TABLE items; --",
                     "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "a" * 70, "1e309", "-0", "v1:AAAA"]),
    st.integers(min_value=1000, max_value=300_000).map(lambda n: "x" * n),  # huge
)
JSON_SCALAR = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
                        st.floats(allow_nan=False, allow_infinity=False), NASTY_TEXT)
JSON_VALUE = st.recursive(JSON_SCALAR, lambda kids: st.one_of(
    st.lists(kids, max_size=4), st.dictionaries(st.text(max_size=10), kids, max_size=4)), max_leaves=12)


def from_schema(schema: dict[str, Any], defs: dict[str, Any], depth: int = 0) -> st.SearchStrategy[Any]:
    """Values valid under the (pydantic-exported) JSON ``schema``, mostly: pydantic checks them."""
    if "$ref" in schema:
        return st.deferred(lambda: from_schema(defs[schema["$ref"].rsplit("/", 1)[-1]], defs, depth + 1))
    if "const" in schema:
        return st.just(schema["const"])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    if "anyOf" in schema:
        return st.one_of([from_schema(s, defs, depth + 1) for s in schema["anyOf"]])
    kind = schema.get("type")
    if isinstance(kind, list):
        return st.one_of([from_schema({**schema, "type": k}, defs, depth) for k in kind])
    if kind == "string":
        if schema.get("format") == "date-time":
            return st.datetimes(timezones=st.just(__import__("datetime").UTC)).map(lambda d: d.isoformat())
        lo, hi = schema.get("minLength", 0), min(schema.get("maxLength", 60), 60)
        if "pattern" in schema:
            return st.from_regex(schema["pattern"], fullmatch=True).filter(lambda s: lo <= len(s) <= hi)
        return st.one_of(
            st.text(min_size=lo, max_size=hi),
            st.sampled_from(["http://site.example.com/a.jpg", "https://www.example.org/page", "NL", "nl",
                             "abuse@hoster.example", "sha256", "illegal", "baseline"]),
        ).filter(lambda s: lo <= len(s) <= hi)
    if kind == "integer":
        return st.integers(min_value=schema.get("minimum", -(2**40)), max_value=schema.get("maximum", 2**40))
    if kind == "number":
        return st.floats(min_value=schema.get("minimum"), max_value=schema.get("maximum"),
                         allow_nan=False, allow_infinity=False)
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    if kind == "array":
        item = from_schema(schema.get("items", {}), defs, depth + 1) if depth < 6 else st.nothing()
        return st.lists(item, max_size=3 if depth < 4 else 0)
    if kind == "object" or "properties" in schema:
        props = schema.get("properties", {})
        if not props:
            return st.dictionaries(st.text(max_size=8), JSON_SCALAR, max_size=3)
        required = set(schema.get("required", ()))
        fixed = {k: from_schema(v, defs, depth + 1) for k, v in props.items() if k in required}
        optional = {k: from_schema(v, defs, depth + 1) for k, v in props.items() if k not in required}
        return st.fixed_dictionaries(fixed, optional=optional)
    return JSON_VALUE


def model_values(model: type[Any]) -> st.SearchStrategy[dict[str, Any]]:
    schema = model.model_json_schema()
    return from_schema(schema, schema.get("$defs", {}))


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[dict[str, Any]]) -> Any:
    """A valid-looking value, damaged in one of the ways producers get things wrong."""
    value = draw(base)
    if not isinstance(value, dict) or not value:
        return value
    key = draw(st.sampled_from(sorted(value)))
    how = draw(st.sampled_from(["drop", "retype", "nasty", "extra", "nest", "null"]))
    value = dict(value)
    if how == "drop":
        value.pop(key)
    elif how == "retype":
        value[key] = draw(JSON_VALUE)
    elif how == "nasty":
        value[key] = draw(NASTY_TEXT)
    elif how == "extra":
        value[draw(st.text(max_size=12))] = draw(JSON_VALUE)
    elif how == "nest":
        value[key] = {"$ref": value.get(key)} if draw(st.booleans()) else [value.get(key)]
    else:
        value[key] = None
    return value


def raw_messages(model: type[Any]) -> st.SearchStrategy[bytes]:
    """Bytes for a topic: valid models, mutated ones, random JSON, random bytes."""
    valid = model_values(model)
    as_json = st.one_of(valid, valid, mutated(valid), mutated(valid), JSON_VALUE).map(
        lambda v: json.dumps(v, ensure_ascii=False).encode("utf-8", "surrogatepass"))
    return st.one_of(as_json, as_json, as_json, st.binary(max_size=200),
                     as_json.map(lambda b: b[: len(b) // 2]))


def yaml_documents(model: type[Any]) -> st.SearchStrategy[str]:
    valid = model_values(model)

    def dump(v: Any) -> str:
        try:
            return yaml.safe_dump(v, allow_unicode=True)
        except yaml.YAMLError:
            return json.dumps(v)

    docs = st.one_of(valid, mutated(valid), JSON_VALUE).map(dump)
    return st.one_of(docs, docs, st.text(max_size=300),
                     st.sampled_from(["a: [", "{", "- - -", "!!python/object:os.system {}", "a: &x [*x]",
                                      "a: &a [1]\nb: &b [*a,*a,*a,*a]\nc: [*b,*b,*b,*b]\n",
                                      "networks:\n  - range: 10.0.0.0/99\n", "hosts: {x: [notanip]}\n",
                                      "partners:\n  - country: 1\n", "\ufeffhosts: {}\n", "---\n---\n"]),
                     docs.map(lambda d: d.replace(":", "", 1)), docs.map(lambda d: "\t" + d))


def csv_texts(columns: list[str]) -> st.SearchStrategy[str]:
    cell = st.one_of(NASTY_TEXT, st.sampled_from(["http://site.example.com/x.jpg", "www.example.org",
                                                  "someone@example.org", "not-an-email", "a\x00@b.test",
                                                  "0" * 64, "f" * 64, "baseline", "nonsense-category"]))

    @st.composite
    def table(draw: st.DrawFn) -> str:
        header = draw(st.lists(st.one_of(st.sampled_from(columns), st.text(max_size=8)), min_size=0, max_size=6))
        rows = draw(st.lists(st.lists(cell, max_size=len(header) + 1), max_size=6))
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(header)
        w.writerows(rows)
        text = buf.getvalue()
        if draw(st.integers(0, 9)) == 0:  # a broken quote, a stray NUL
            text = text.replace(",", ',"', 1) if draw(st.booleans()) else text.replace(",", "\x00", 1)
        return text

    undecodable = st.binary(max_size=200).map(lambda b: b"url\n" + b + b"\n").map(
        lambda b: b.decode("utf-8", "surrogateescape"))
    return st.one_of(table(), table(), table(), undecodable, st.text(max_size=200))


# -- the world the stages run in -------------------------------------------------------------


@dataclass
class Tally:
    cases: int = 0
    failures: list[str] = field(default_factory=list)
    crashes: list[str] = field(default_factory=list)
    nfail: int = 0
    ncrash: int = 0
    seconds: float = 0.0

    def fail(self, text: str) -> None:
        self.nfail += 1
        if len(self.failures) < EXAMPLES:
            self.failures.append(text[:400])

    def crash(self, text: str) -> None:
        self.ncrash += 1
        if len(self.crashes) < EXAMPLES:
            self.crashes.append(text[:600])


class _AcceptingMailer:
    def __init__(self) -> None:
        self.sent = 0

    def send(self, message: Any) -> None:
        self.sent += 1


@contextmanager
def fuzz_system(tmp: Path) -> Iterator[Any]:
    """A system on SQLite in ``tmp`` whose side effects stay in the process."""
    import httpx

    from entrypoints.bootstrap import bootstrap
    from entrypoints.demo import NoDns
    from hotline.config import Settings

    hosting = tmp / "hosting.yaml"
    hosting.write_text("hosts: {}\nnetworks:\n  - range: 127.0.0.0/8\n    hoster: Loopback\n    abuse: abuse@loopback.test\n    country: NL\n")
    partners = tmp / "partners.yaml"
    partners.write_text("partners:\n  - country: DE\n    name: Partner DE\n    endpoint: http://127.0.0.1:9/forwards\n")
    settings = Settings(database_url=f"sqlite:///{tmp / 'fuzz.db'}", index_dir="none", kafka_brokers=None,
                        hosting_file=hosting, partners_file=partners, fetch_timeout_seconds=1.0,
                        fetch_item_deadline_seconds=2.0)
    system = bootstrap(
        settings, dns=NoDns(), mailer=_AcceptingMailer(),
        fetch_transport=httpx.MockTransport(lambda r: httpx.Response(404)),
        partner_transport=httpx.MockTransport(lambda r: httpx.Response(202, json={})),
    )
    try:
        yield system
    finally:
        system.close()


# -- targets ---------------------------------------------------------------------------------

Target = tuple[str, st.SearchStrategy[Any], Callable[[Any, Tally], None]]


def stage_targets(system: Any) -> list[Target]:
    from hotline.kernel.messages import REJECTED
    from hotline.runtime.steps import RetryRequested, StepRunner
    from schemas import TOPICS

    targets: list[Target] = []
    for stage in system.build_stages():
        runner = StepRunner(stage, system.sessions)
        for topic in stage.inputs:
            model = TOPICS[topic].model

            def check(raw: bytes, tally: Tally, runner: Any = runner, topic: str = topic, model: Any = model) -> None:
                try:
                    model.model_validate_json(raw)
                    valid = True
                except ValueError:
                    valid = False
                started = time.monotonic()
                try:
                    out = runner.process(topic, raw)
                except RetryRequested:
                    out = None
                except Exception as exc:  # noqa: BLE001 - that is what we count
                    tally.crash(f"{type(exc).__name__}: {exc} <- {raw[:200]!r}")
                    return
                took = time.monotonic() - started
                if took > STUCK_SECONDS:
                    tally.fail(f"took {took:.1f}s <- {raw[:200]!r}")
                if not valid and out is not None:
                    rejected = [o for o in out if o.topic == REJECTED]
                    if not rejected or not all(getattr(o.message, "reason", "") for o in rejected):
                        tally.fail(f"invalid message not rejected with a reason <- {raw[:200]!r}")

            targets.append((f"stage:{stage.name}:{topic}", raw_messages(model), check))
    read = {t for s in system.build_stages() for t in s.inputs}
    for name, topic in TOPICS.items():
        if name in read:
            continue

        def check_decode(raw: bytes, tally: Tally, name: str = name) -> None:
            from hotline.kernel.messages import InvalidMessage, decode

            try:
                decode(name, raw)
            except InvalidMessage as exc:
                if not exc.reason:
                    tally.fail(f"rejected without a reason <- {raw[:200]!r}")
            except Exception as exc:  # noqa: BLE001
                tally.crash(f"{type(exc).__name__}: {exc} <- {raw[:200]!r}")

        targets.append((f"decode:{name}", raw_messages(topic.model), check_decode))
    return targets


def operator_file_check(load: Callable[[str], Any]) -> Callable[[str, Tally], None]:
    """The check of an operator-file loader: only ``OperatorFileError``, on one line."""
    from hotline.operator_files import OperatorFileError

    def check(text: str, tally: Tally) -> None:
        try:
            load(text)
        except OperatorFileError as exc:
            message = str(exc)
            if "\n" in message.strip() or len(message) > 2000 or not message.strip():
                tally.fail(f"unclear error {message[:200]!r} <- {text[:200]!r}")
        except Exception as exc:  # noqa: BLE001
            tally.crash(f"{type(exc).__name__}: {exc} <- {text[:200]!r}")
    return check


def file_targets() -> list[Target]:
    from services.classify.hosting import HostingDirectory, HostingFile
    from services.escalate.partners import PartnerDirectory, PartnersFile

    return [
        ("hosting-file", yaml_documents(HostingFile), operator_file_check(HostingDirectory.from_text)),
        ("partners-file", yaml_documents(PartnersFile), operator_file_check(PartnerDirectory.from_text)),
    ]


def csv_targets(system: Any) -> list[Target]:
    from hotline.storage.unit_of_work import SqlUnitOfWork
    from schemas.reports import ReportSubmitted
    from services.bank.bank import CSV_COLUMNS, import_csv
    from services.ingest.bulk import read_report_rows

    def reports(text: str, tally: Tally) -> None:
        try:
            messages, _, errors = read_report_rows(io.StringIO(text))
        except Exception as exc:  # noqa: BLE001
            tally.crash(f"{type(exc).__name__}: {exc} <- {text[:200]!r}")
            return
        for m in messages:
            try:
                ReportSubmitted.model_validate_json(m.model_dump_json())
            except ValueError as exc:
                tally.fail(f"accepted an invalid report ({exc}) <- {text[:200]!r}")
        if any(not e.strip() for e in errors):
            tally.fail(f"a row refused without a reason <- {text[:200]!r}")

    def bank(text: str, tally: Tally) -> None:
        with system.sessions() as session:
            store = SqlUnitOfWork(session)
            try:
                _, errors = import_csv(io.StringIO(text), store, default_source="fuzz")
                store.flush()
            except Exception as exc:  # noqa: BLE001
                tally.crash(f"{type(exc).__name__}: {exc} <- {text[:200]!r}")
                return
            finally:
                store.rollback()  # nothing kept: the next case starts from the same bank
        if any(not e.strip() for e in errors):
            tally.fail(f"a row refused without a reason <- {text[:200]!r}")

    return [
        ("reports-csv", csv_texts(["url", "report", "description", "reporter_email"]), reports),
        ("bank-csv", csv_texts(list(CSV_COLUMNS)), bank),
    ]


def run_target(target: Target, cases: int, derandomize: bool) -> Tally:
    name, strategy, check = target
    tally = Tally()
    started = time.monotonic()

    @settings(max_examples=cases, deadline=None, database=None, derandomize=derandomize,
              phases=[Phase.generate], suppress_health_check=list(HealthCheck), print_blob=False)
    @given(strategy)
    def fuzz(value: Any) -> None:
        tally.cases += 1
        check(value, tally)

    fuzz()
    tally.seconds = time.monotonic() - started
    return tally


def run(cases: int, only: str = "", derandomize: bool = False, out: Any = sys.stdout) -> dict[str, Tally]:
    """Fuzz every target (``only``: those whose name starts with it), ``cases`` in all."""
    logging.disable(logging.WARNING)  # rejections log a warning each: millions of lines otherwise
    try:
        with tempfile.TemporaryDirectory(prefix="hotline-fuzz-") as tmp, fuzz_system(Path(tmp)) as system:
            targets = [t for t in stage_targets(system) + file_targets() + csv_targets(system) if t[0].startswith(only)]
            if not targets:
                raise SystemExit(f"no target starts with {only!r}")
            per = max(1, cases // len(targets))
            results: dict[str, Tally] = {}
            for target in targets:
                results[target[0]] = tally = run_target(target, per, derandomize)
                print(f"{target[0]:<40} {tally.cases:>8} {tally.nfail:>8} {tally.ncrash:>8} {tally.seconds:>8.1f}",
                      file=out, flush=True)
            return results
    finally:
        logging.disable(logging.NOTSET)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=100_000, help="cases in all, spread over the targets")
    parser.add_argument("--only", default="", help="only targets whose name starts with this")
    parser.add_argument("--derandomize", action="store_true", help="the same cases every run")
    args = parser.parse_args(argv)
    print(f"{'target':<40} {'cases':>8} {'failures':>8} {'crashes':>8} {'seconds':>8}")
    results = run(args.cases, args.only, args.derandomize)
    total = Tally(cases=sum(t.cases for t in results.values()), nfail=sum(t.nfail for t in results.values()),
                  ncrash=sum(t.ncrash for t in results.values()), seconds=sum(t.seconds for t in results.values()))
    print(f"{'total':<40} {total.cases:>8} {total.nfail:>8} {total.ncrash:>8} {total.seconds:>8.1f}")
    for name, tally in results.items():
        for text in tally.crashes:
            print(f"CRASH   {name}: {text}")
        for text in tally.failures:
            print(f"FAILURE {name}: {text}")
    return 1 if total.nfail or total.ncrash else 0


if __name__ == "__main__":
    sys.exit(main())
