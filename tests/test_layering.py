"""The package layering (docs/contributing.md#package-layout): the lower layers (models,
losses, data) never import the upper ones (methods, engine, the task packages), not even
inside a function, so that a model or a dataset can be used, tested and reused alone."""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

import pytest

import gpaco

ROOT = Path(__file__).resolve().parents[1]
LOWER = ("gpaco.models", "gpaco.losses", "gpaco.data")
UPPER = ("gpaco.methods", "gpaco.engine", "gpaco.classification", "gpaco.segmentation")


def module_name(path: Path, root: Path = ROOT) -> str:
    """``gpaco/models/convert.py`` -> ``gpaco.models.convert`` (a package's ``__init__.py`` -> the package)."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _absolute(name: str, level: int, module: str, is_package: bool) -> str:
    """The absolute name of ``from <level dots><name> import ...`` written in ``module``."""
    if level == 0:
        return name
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[:len(base) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def _literal(node: Optional[ast.expr]) -> Optional[str]:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def imported_names(source: str, module: str, is_package: bool = False) -> Iterator[Tuple[int, str]]:
    """(line, absolute module name) of every import in ``source`` at any depth: ``import a.b``,
    ``from .x import y`` (also ``x.y``, which may be a submodule), ``importlib.import_module("a.b")``
    and ``__import__("a.b")`` with literal names. ``from gpaco import name`` also yields the
    module that ``gpaco`` loads ``name`` from (its lazy exports)."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node.module or "", node.level, module, is_package)
            yield node.lineno, base
            for alias in node.names:
                yield node.lineno, f"{base}.{alias.name}"
                if base == "gpaco" and alias.name in gpaco._EXPORTS:
                    yield node.lineno, gpaco._EXPORTS[alias.name]
        elif isinstance(node, ast.Call):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
            name = _literal(node.args[0]) if called in ("import_module", "__import__") and node.args else None
            if name is not None:
                package = _literal(node.args[1]) if len(node.args) > 1 else None
                level = len(name) - len(name.lstrip("."))
                if level:
                    name = _absolute(name[level:], level, package + ".x" if package else module,
                                     is_package and package is None)
                yield node.lineno, name


def _under(name: str, packages: Tuple[str, ...]) -> Optional[str]:
    return next((p for p in packages if name == p or name.startswith(p + ".")), None)


def layering_violations(path: Path, module: str, forbidden: Tuple[str, ...] = UPPER) -> List[str]:
    """``file:line: <module> imports <name> (<package> is a layer above)``, one per line with a
    forbidden import (``from ..methods import registry`` names ``gpaco.methods``)."""
    by_line = {}
    for line, name in imported_names(path.read_text(), module, is_package=path.name == "__init__.py"):
        if _under(name, forbidden) and (line not in by_line or len(name) < len(by_line[line])):
            by_line[line] = name
    return [f"{path}:{line}: {module} imports {name} ({_under(name, forbidden)} is a layer above)"
            for line, name in sorted(by_line.items())]


def lower_layer_files() -> List[Path]:
    files = [p for pkg in LOWER for p in sorted((ROOT / Path(*pkg.split("."))).rglob("*.py"))]
    assert len(files) > 30, files  # the walk found the packages
    return files


def test_lower_layers_import_no_upper_layer():
    violations = [v for p in lower_layer_files() for v in layering_violations(p, module_name(p))]
    assert not violations, "\n".join(["the lower layers import upper ones:"] + violations)


def test_imports_are_resolved_at_any_depth(tmp_path):
    """The checker itself, on a module written as if it were gpaco/models/bad.py."""
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import importlib\n"
        "import segmentation_models_pytorch\n"  # not gpaco.segmentation
        "from . import heads\n"
        "from ..checkpoint import load_checkpoint\n"
        "from gpaco import get_method\n"  # gpaco's lazy export of gpaco.methods
        "\n"
        "def build():\n"
        "    from ..methods import registry\n"
        "    import gpaco.engine.cli as cli\n"
        "    mod = importlib.import_module('gpaco.classification.evaluate')\n"
        "    return __import__('gpaco.segmentation')\n"
        "\n"
        "class Lazy:\n"
        "    def load(self):\n"
        "        from .. import engine\n"
        "        return importlib.import_module('..methods.rebuild', 'gpaco.models')\n"
    )
    found = layering_violations(bad, "gpaco.models.bad")
    assert [v.split(": ", 1)[0] for v in found] == [f"{bad}:{n}" for n in (5, 8, 9, 10, 11, 15, 16)], found
    assert f"{bad}:8: gpaco.models.bad imports gpaco.methods (gpaco.methods is a layer above)" in found
    assert any(v.startswith(f"{bad}:5:") and "imports gpaco.methods " in v for v in found)
    assert any(v.startswith(f"{bad}:16:") and "imports gpaco.methods.rebuild " in v for v in found)
    assert any(v.startswith(f"{bad}:15:") and "imports gpaco.engine " in v for v in found)
    with pytest.raises(AssertionError, match=r"bad.py:8: gpaco.models.bad imports gpaco.methods"):
        assert not found, "\n".join(found)


def test_relative_imports_of_a_package_init(tmp_path):
    """In a package's ``__init__.py`` one dot is the package itself."""
    init = tmp_path / "__init__.py"
    init.write_text("from .build import x\nfrom ..engine import cli\n")
    assert {name for _, name in imported_names(init.read_text(), "gpaco.data", is_package=True)} == {
        "gpaco.data.build", "gpaco.data.build.x", "gpaco.engine", "gpaco.engine.cli"}
    assert [v.split(": ", 1)[1] for v in layering_violations(init, "gpaco.data")] == [
        "gpaco.data imports gpaco.engine (gpaco.engine is a layer above)"]


def test_the_engine_imports_no_method_and_no_task():
    """The engine runs whatever method and task it is handed (gpaco/engine/fit.py): it never
    names a method, the registry or a task package, so a new method is no engine edit."""
    files = sorted((ROOT / "gpaco" / "engine").rglob("*.py"))
    assert len(files) > 8, files
    violations = [v for p in files for v in layering_violations(
        p, module_name(p), ("gpaco.methods", "gpaco.classification", "gpaco.segmentation"))]
    assert not violations, "\n".join(["the engine imports a method or a task:"] + violations)
