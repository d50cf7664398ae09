"""The packages import downward only, in the order the README states, and defer imports only with a reason.

Every module is parsed (function-level imports included, nothing is imported). A package may
import itself and the packages below it; an import of a package above it, or a cycle between
packages, fails. An import inside a function must say why on its line (``# lazy: <reason>``):
an optional or heavy dependency loaded after the command line is parsed.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: The layer order, lowest first (README, "Layout").
LAYERS = ("idlevit", "plugins", "engines", "validate", "export", "benchmarks")
LAZY_MARK = "# lazy:"


@dataclass(frozen=True)
class Violation:
    module: str
    line: int
    what: str

    def __str__(self) -> str:
        return f"{self.module}:{self.line}: {self.what}"


def _module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> list[str]:
    """Absolute names an import statement loads (relative ones resolved against ``module``)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:
        base = module.split(".")
        base = base if is_package else base[:-1]
        base = base[: len(base) - (node.level - 1)]
        return [".".join([*base, node.module] if node.module else base)]
    return [node.module or ""]


def check_layers(root: Path, layers: tuple[str, ...] = LAYERS) -> list[Violation]:
    """Every import against the order, and every function-level import without a reason, under ``root``."""
    floor = {name: i for i, name in enumerate(layers)}
    violations: list[Violation] = []
    edges: set[tuple[str, str]] = set()
    for package in layers:
        for path in sorted((root / package).rglob("*.py")):
            source = path.read_text()
            lines = source.splitlines()
            module = _module_name(root, path)
            tree = ast.parse(source, filename=str(path))
            nested = {
                id(inner)
                for outer in ast.walk(tree)
                if isinstance(outer, (ast.FunctionDef, ast.AsyncFunctionDef))
                for inner in ast.walk(outer)
                if isinstance(inner, (ast.Import, ast.ImportFrom))
            }
            for node in ast.walk(tree):
                if not isinstance(node, (ast.Import, ast.ImportFrom)):
                    continue
                for name in _imported(node, module, path.name == "__init__.py"):
                    target = name.split(".")[0]
                    if target in floor and target != package:
                        edges.add((package, target))
                        if floor[target] > floor[package]:
                            violations.append(
                                Violation(
                                    module,
                                    node.lineno,
                                    f"{package} (floor {floor[package] + 1}) imports "
                                    f"{name} from {target} (floor {floor[target] + 1}), above it",
                                )
                            )
                if id(node) in nested and LAZY_MARK not in lines[node.lineno - 1]:
                    violations.append(
                        Violation(module, node.lineno, f"function-level import without '{LAZY_MARK} <reason>'")
                    )
    violations += [Violation(a, 0, f"cycle: {a} <-> {b}") for a, b in edges if (b, a) in edges and a < b]
    return violations


def test_packages_import_downward_only() -> None:
    violations = check_layers(ROOT)
    assert not violations, "\n".join(map(str, violations))


def test_the_readme_states_the_same_order() -> None:
    text = (ROOT / "README.md").read_text()
    assert " -> ".join(LAYERS) in text


@pytest.mark.parametrize(
    ("path", "source", "expected"),
    [
        ("engines/planted.py", "from validate.judge import run_parity\n", "imports validate.judge"),
        ("idlevit/planted.py", "def f():\n    from export import exporter  # lazy: planted\n", "imports export"),
        ("validate/planted.py", "def f():\n    import numpy\n", "function-level import without"),
        ("plugins/planted.py", "from ..engines import target\n", "imports engines from engines"),
    ],
    ids=["upward", "upward-lazy", "unmarked-lazy", "relative-upward"],
)
def test_a_planted_violation_is_found(tmp_path: Path, path: str, source: str, expected: str) -> None:
    for package in LAYERS:
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / path).write_text(source)
    found = check_layers(tmp_path)
    assert len(found) == 1 and expected in found[0].what, found
