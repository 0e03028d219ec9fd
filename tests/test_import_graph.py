"""Imports run one way: every import inside `sane_hf` (module-level and function-level alike) goes from a package to
one below it in the pipeline's order (docs/architecture.md), so there is no cycle and no stage imports a later one.

The graph is read from the source with `ast`, not by importing, so an import hidden inside a function counts too;
imports under `if TYPE_CHECKING:` are annotations only and do not count.
"""

import ast
import sys
from pathlib import Path


PACKAGE = Path(__file__).resolve().parent.parent / "sane_hf"
# Lowest first; a package may import only packages listed before it (`__init__` is the public API, on top of the
# model and tokenization layers it re-exports).
LAYERS = [
    ("constants", "utils"),
    ("models", "tokenization", "zoo_models", "tasks"),
    ("__init__",),
    ("hub",),
    ("data",),
    ("training",),
    ("probing",),
    ("generation",),
    ("quickstart",),
    ("cli",),
]
RANK = {package: rank for rank, packages in enumerate(LAYERS) for package in packages}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def internal_imports() -> list[tuple[str, str, str]]:
    """`(importing module, imported module, package edge)` for every relative import between two packages."""
    edges = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module_name(path)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        annotation_only = {
            id(sub)
            for node in ast.walk(tree)
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for sub in ast.walk(node)
        }
        for node in ast.walk(tree):
            if id(node) in annotation_only:
                continue
            targets = []
            if isinstance(node, ast.ImportFrom) and node.level:
                base = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                targets.append(".".join(base + ([node.module] if node.module else [])))
            elif isinstance(node, ast.Import | ast.ImportFrom):
                names = [node.module] if isinstance(node, ast.ImportFrom) else [alias.name for alias in node.names]
                targets += [name for name in names if name and name.split(".")[0] == "sane_hf"]
            for target in targets:
                if _package(target) != _package(module):
                    edges.append((module, target, f"{_package(module)} -> {_package(target)}"))
    return edges


def test_every_package_is_placed_in_a_layer():
    packages = {_package(_module_name(path)) for path in PACKAGE.rglob("*.py")}
    assert packages <= set(RANK), f"place {sorted(packages - set(RANK))} in LAYERS (docs/architecture.md)"


def test_imports_run_one_way():
    upward = [
        f"{module} imports {target} ({edge})"
        for module, target, edge in internal_imports()
        if RANK.get(_package(target), -1) >= RANK.get(_package(module), -1)
    ]
    assert not upward, "imports that run up the pipeline or sideways:\n" + "\n".join(upward)


def test_the_walker_sees_function_level_imports(tmp_path, monkeypatch):
    """A cycle hidden in a function (as `hub -> probing` once was) is found."""
    fake = tmp_path / "sane_hf"
    (fake / "hub").mkdir(parents=True)
    (fake / "probing").mkdir()
    (fake / "hub" / "cards.py").write_text("def card():\n    from ..probing.report import table\n")
    (fake / "probing" / "report.py").write_text("from ..hub.cards import card\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    edges = {edge for _, _, edge in internal_imports()}
    assert edges == {"hub -> probing", "probing -> hub"}


# Imported inside the functions that need them, because most commands never do and each is slow to import: the
# dataset stack (conversion, loading, streaming), scikit-learn (probes, task data), matplotlib (plots), scipy
# (weight matching), PIL (image tasks) and torch.fx (tracing an unknown architecture).
DEFERRED_THIRD_PARTY = {"datasets", "pyarrow", "sklearn", "matplotlib", "scipy", "PIL", "torch.fx"}
# The only module that defers imports of the package's own modules: each console command loads just its stage.
DEFERS_OWN_MODULES = {"sane_hf.cli"}


def function_level_imports(package: Path = PACKAGE) -> list[tuple[str, int, str]]:
    """`(module, line, imported name)` for every import statement inside a function body, as read by `ast`."""
    found = []
    for path in sorted(package.rglob("*.py")):
        module = _module_name(path)
        for function in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(function):
                if isinstance(node, ast.ImportFrom):
                    found.append((module, node.lineno, "." * node.level + (node.module or "")))
                elif isinstance(node, ast.Import):
                    found += [(module, node.lineno, alias.name) for alias in node.names]
    return found


def test_function_level_imports_only_where_start_up_time_needs_them():
    def allowed(module: str, name: str) -> bool:
        if name.startswith(".") or name.split(".")[0] == "sane_hf":
            return module in DEFERS_OWN_MODULES
        return any(name == heavy or name.startswith(heavy + ".") for heavy in DEFERRED_THIRD_PARTY)

    unexplained = [f"{m}:{line} imports {name}" for m, line, name in function_level_imports() if not allowed(m, name)]
    assert not unexplained, (
        "imports inside functions without a reason (move them to the top of the module, or name the reason in "
        "DEFERRED_THIRD_PARTY):\n" + "\n".join(unexplained)
    )
