"""The layers of docs/architecture.md: each package imports only the layers below it."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# package -> the sbt packages it may import (docs/architecture.md, "may import")
ALLOWED = {
    "sbt_core": set(),
    "training": {"sbt_core"},
    "harness": {"sbt_core", "training"},
    "tui": {"sbt_core", "harness"},
    "sbt_cli": {"sbt_core", "training", "harness", "tui"},
}


# display libraries: only the CLI and the TUI show things (the harness computes and stores)
DISPLAY = {"rich", "plotext", "matplotlib", "textual"}


def imported_modules(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module.split(".")[0])
    return out


def imported_packages(path: Path) -> set[str]:
    return imported_modules(path) & set(ALLOWED)


def test_each_package_imports_only_the_layers_below_it():
    wrong = []
    for package, allowed in ALLOWED.items():
        for path in sorted((ROOT / package).rglob("*.py")):
            for other in imported_packages(path) - allowed - {package}:
                wrong.append(f"{path.relative_to(ROOT)} imports {other}")
    assert not wrong, "\n".join(wrong)


def test_display_code_lives_in_the_cli_and_the_tui():
    shown = [f"{path.relative_to(ROOT)} imports {', '.join(sorted(imported_modules(path) & DISPLAY))}"
             for package in ("sbt_core", "training", "harness") for path in sorted((ROOT / package).rglob("*.py"))
             if imported_modules(path) & DISPLAY]
    assert not shown, "\n".join(shown)


def test_the_architecture_doc_names_what_exists():
    doc = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    from sbt_core import countdown, solver
    from sbt_core.backends import BACKENDS, load_backend  # noqa: F401
    from sbt_core.search import METHODS, method_params  # noqa: F401
    from sbt_core.search.common import SearchRun

    for name in ("play_step", "replay", "verify", "parse_puzzle"):
        assert f"`{name}" in doc or f"countdown.{name}" in doc, name
        assert hasattr(countdown, name)
    assert hasattr(solver, "first_wrong_step") and hasattr(SearchRun, "finish")
    assert "self-backtrack" in METHODS and "_registry()" in doc
