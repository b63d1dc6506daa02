"""The codebase's shape is kept by tools, not memory: stages import downwards only (the import-linter
contracts in pyproject.toml), no module reaches into another's private names, functions stay short."""

import ast
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "tunesmith"


def modules() -> list[tuple[str, Path, ast.Module]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if "migrations" in path.parts:
            continue
        name = ".".join(("tunesmith", *path.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(
            ".__init__"
        )
        found.append((name, path, ast.parse(path.read_text(encoding="utf-8"))))
    return found


def test_stages_import_downwards_only():
    linter = Path(sys.executable).parent / "lint-imports"
    assert linter.exists(), "import-linter is missing: `make setup` installs it (the dev extra)"
    result = subprocess.run(
        [str(linter), "--no-cache", "--config", str(ROOT / "pyproject.toml")],
        cwd=ROOT / "src",
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_no_module_imports_another_modules_private_names():
    reached = []
    for name, path, tree in modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tunesmith"):
                if node.module == name:
                    continue
                reached += [
                    f"{path.relative_to(ROOT)}:{node.lineno} {node.module}.{alias.name}"
                    for alias in node.names
                    if alias.name.startswith("_")
                ]
    assert not reached, "make these public where they are shared, or move them:\n" + "\n".join(reached)


def test_functions_stay_short():
    lengths = {
        f"{path.relative_to(ROOT)}:{node.lineno} {node.name}": node.end_lineno - node.lineno + 1
        for _, path, tree in modules()
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    }
    assert statistics.median(lengths.values()) <= 15
    long = {where: n for where, n in lengths.items() if n > 80}
    assert not long, f"functions over 80 lines: {long}"


def test_command_modules_and_routes_stay_thin():
    for path in sorted((PACKAGE / "cli").glob("*.py")):
        lines = len(path.read_text(encoding="utf-8").splitlines())
        assert lines <= 400, f"{path.relative_to(ROOT)} has {lines} lines; move logic into its stage"
    for path in sorted((PACKAGE / "serve" / "routes").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                assert length <= 40, f"{path.relative_to(ROOT)}:{node.lineno} {node.name} has {length} lines"


def test_every_test_the_docs_cite_exists():
    """The docs prove each promise with a named test: it must exist."""
    import re

    root = Path(__file__).resolve().parents[1]
    cited = set()
    for doc in ("governance.md", "reliability.md", "data-fidelity.md"):
        cited |= set(re.findall(r"tests/(\w+\.py)::(\w+)", (root / "docs" / doc).read_text(encoding="utf-8")))
    assert cited
    missing = [
        f"{file}::{name}"
        for file, name in sorted(cited)
        if f"def {name}(" not in (root / "tests" / file).read_text(encoding="utf-8")
    ]
    assert not missing, missing
