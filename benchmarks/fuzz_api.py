"""Fuzz the HTTP API with schemathesis, generated from its own OpenAPI document: every
operation, called with a valid token of a role it is for, against the embedded app served
by uvicorn on loopback (SQLite in a temporary directory, no stages running).

    python -m benchmarks.fuzz_api                 # 100,000 cases in all (spread over the operations)
    python -m benchmarks.fuzz_api --cases 5000    # fewer

It prints the cases run, the failures (a response the document does not describe: an
undocumented status, a body of another shape or type) and the 5xx, per operation and in
total, and exits 1 when there was any failure or 5xx. ``tests/integration/test_api_fuzz.py``
runs a small sample of the same in the normal suite.

Checks: ``not_a_server_error``, ``status_code_conformance``, ``content_type_conformance``,
``response_schema_conformance``. Generation is derandomized (the same cases every run for one
version of the document), so a result depends on the code alone.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROLE_BY_PREFIX = (
    ("/api/v1/partner", "partner"),
    ("/api/v1/escalations", "police"),
    ("/api/v1/hashcheck", "hoster"),
    ("/api/v1/items", "analyst"),
)
"""The role each operation is called with (the role it is for, so its own checks run, e.g. a
partner's country); everything else as admin, who may call every route."""


def role_for(path: str) -> str:
    return next((role for prefix, role in ROLE_BY_PREFIX if path.startswith(prefix)), "admin")


@dataclass
class Tally:
    cases: int = 0
    server_errors: int = 0
    failures: list[str] = field(default_factory=list)


@contextmanager
def fuzz_target(tmp: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """The embedded app on loopback (limits raised so the fuzzer is not throttled): its base
    URL and a token per role."""
    from tests.integration.webkit import build, serve

    app, system, tokens = build(tmp, auth_max_failures=0, login_per_minute=0,
                                hashcheck_requests_per_minute=0, hashcheck_daily_hashes=0)
    try:
        with serve(app) as base:
            yield base, tokens
    finally:
        system.engine.dispose()


def fuzz(base: str, tokens: dict[str, str], examples_per_operation: int,
         on_case: Any = None) -> dict[str, Tally]:
    """Run ``examples_per_operation`` generated cases against every operation of the document
    at ``base``; returns a tally per operation (``METHOD path``)."""
    import schemathesis
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    checks = [not_a_server_error, status_code_conformance, content_type_conformance,
              response_schema_conformance]
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
    tallies: dict[str, Tally] = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        name = f"{operation.method.upper()} {operation.path}"
        tally = tallies.setdefault(name, Tally())
        headers = {"Authorization": f"Bearer {tokens[role_for(operation.path)]}"}

        _one_operation(operation, tally, headers, base, checks, examples_per_operation, on_case)
    return tallies


def _one_operation(operation: Any, tally: Tally, headers: dict[str, str], base: str, checks: list[Any],
                   examples: int, on_case: Any) -> None:
    from hypothesis import HealthCheck, Phase, given, settings

    @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
    @given(case=operation.as_strategy())
    def run(case: Any) -> None:
        response = case.call(base_url=base, headers=headers, timeout=30)
        tally.cases += 1
        if response.status_code >= 500:
            tally.server_errors += 1
        try:
            case.validate_response(response, checks=checks)
        except (Exception, BaseExceptionGroup) as exc:  # a check failed: record it, keep fuzzing
            first = str(exc).strip().splitlines()
            tally.failures.append(f"{response.status_code}: {' '.join(first[:3])[:300]}")
        if on_case is not None:
            on_case()

    run()


def report(tallies: dict[str, Tally], out: Any = sys.stdout) -> tuple[int, int, int]:
    """Print the table; return (cases, failures, 5xx)."""
    width = max(len(n) for n in tallies)
    print(f"{'operation':{width}}  {'cases':>7}  {'failures':>8}  {'5xx':>5}", file=out)
    for name, t in sorted(tallies.items()):
        print(f"{name:{width}}  {t.cases:7}  {len(t.failures):8}  {t.server_errors:5}", file=out)
        for failure in sorted(set(t.failures))[:3]:
            print(f"    {failure}", file=out)
    cases = sum(t.cases for t in tallies.values())
    failures = sum(len(t.failures) for t in tallies.values())
    errors = sum(t.server_errors for t in tallies.values())
    print(f"{'total':{width}}  {cases:7}  {failures:8}  {errors:5}", file=out)
    return cases, failures, errors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=100_000, help="cases in all (default 100,000)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fuzz-api-") as tmp, fuzz_target(Path(tmp)) as (base, tokens):
        import schemathesis

        operations = sum(1 for _ in schemathesis.openapi.from_url(f"{base}/openapi.json").get_all_operations())
        per_operation = max(1, args.cases // max(operations, 1))
        print(f"{operations} operations, {per_operation} cases each, against {base}")
        _, failures, errors = report(fuzz(base, tokens, per_operation))
    return 1 if failures or errors else 0


if __name__ == "__main__":
    sys.exit(main())
