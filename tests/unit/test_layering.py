"""The platform (``hotline``) knows no feature: none of its modules imports ``services``,
``entrypoints`` or ``doubles``, at module level or inside a function. And no stage
commits, rolls back or sleeps: the runtime owns the transaction and the back-off.

The first check imports every platform module in a fresh interpreter and looks at what
got loaded; the second reads every import statement (so a lazy import inside a function
is caught too). ``lint-imports`` (import-linter, contract in pyproject.toml) checks the
same in CI.
"""

from __future__ import annotations

import ast
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import hotline

ROOT = Path(__file__).resolve().parents[2]
FEATURES = ("services", "entrypoints", "doubles")


def platform_modules() -> list[str]:
    return sorted(m.name for m in pkgutil.walk_packages(hotline.__path__, "hotline.") if ".migrations" not in m.name)


def test_importing_every_platform_module_loads_no_feature() -> None:
    modules = platform_modules()
    assert "hotline.runtime.kafka" in modules and "hotline.kernel.stage" in modules
    code = (
        "import importlib, json, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        f"print(json.dumps(sorted(n for n in sys.modules if n.split('.')[0] in {FEATURES!r})))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def test_no_platform_source_imports_a_feature_even_lazily() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for path in sorted((ROOT / "hotline").rglob("*.py"))
        for line, name in _imports(path)
        if name.split(".")[0] in FEATURES
    ]
    assert offenders == []


NOT_STAGES = ("routes.py", "pages.py")


def _stage_modules() -> list[Path]:
    """Stage logic and its steps, and the capabilities they use: everything under services/
    except web routes and pages (a web request is its own unit of work)."""
    return [p for p in sorted((ROOT / "services").rglob("*.py")) if p.name not in NOT_STAGES]


def test_no_stage_commits_rolls_back_or_sleeps() -> None:
    offenders = []
    for path in _stage_modules():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                name = node.func.attr
                owner = node.func.value
                if name in ("commit", "rollback") or (
                    name == "sleep" and isinstance(owner, ast.Name) and owner.id in ("time", "asyncio")
                ):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} calls {name}()")
    assert offenders == []


def test_the_layering_check_would_catch_an_offender(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from services.notify.stage import NotifyStage\n    import time\n    time.sleep(1)\n")
    assert _imports(bad) == [(2, "services.notify.stage"), (3, "time")]
