"""The axe-core accessibility audit, injected into the page under test by selenium.

axe-core comes from the npm registry (``tests/e2e/package.json``, exact version, lock
committed; ``.ci/run`` runs ``npm ci``); the page itself never loads it or anything else
from elsewhere. The audit runs axe's default rule set (WCAG 2.x A and AA plus best
practices) on the whole document.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

AXE_JS = Path(__file__).parent / "node_modules" / "axe-core" / "axe.min.js"

_RUN = """
const done = arguments[arguments.length - 1];
axe.run(document, {resultTypes: ["violations"]})
  .then(r => done(r.violations.map(v => ({
      id: v.id, impact: v.impact, help: v.help,
      nodes: v.nodes.map(n => n.target.join(" ") + " :: " + n.failureSummary)}))))
  .catch(e => done([{id: "axe-error", impact: "critical", help: String(e), nodes: []}]));
"""


def axe_violations(browser: Any) -> list[dict[str, Any]]:
    """Every axe violation on the current page (empty: none)."""
    assert AXE_JS.exists(), f"{AXE_JS} is missing: run `npm ci` in tests/e2e (as .ci/run does)"
    browser.execute_script(AXE_JS.read_text(encoding="utf-8"))
    browser.set_script_timeout(60)
    result: list[dict[str, Any]] = browser.execute_async_script(_RUN)
    return result


def describe(violations: list[dict[str, Any]]) -> str:
    return "\n".join(f"{v['id']} ({v['impact']}): {v['help']}\n    " + "\n    ".join(v["nodes"]) for v in violations)
