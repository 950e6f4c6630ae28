"""The repository layout rules docs/architecture.md sets out.

The floors: the ground floor imports nothing above it; controllers, gateway, local and the
two images' packages each import only the ground floor and themselves; the package's
__main__ alone wires them together. The checker is fed forbidden sources of its own below,
so a form of import it cannot see shows up as a failing test rather than a silent pass.
"""

import ast
import importlib
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "operator" / "tuneforge"
SOURCE_ROOTS = (REPO / "operator", REPO / "trainer-image", REPO / "inference-image")
GROUND_FLOOR = {"api", "config", "contracts", "storage", "datasets", "weights", "apikeys", "jobfiles", "serving_auth", "webhook_signing"}
UPPER_FLOORS = {"controllers", "gateway", "local", "tuneforge_trainer", "tuneforge_inference"}
IMAGE_PACKAGES = {"tuneforge_trainer", "tuneforge_inference"}
WIRING = "tuneforge.__main__"
TOP_LEVEL_MODULES = {path.stem for path in PACKAGE.iterdir() if path.suffix == ".py" or (path / "__init__.py").exists()}


def test_operator_directory_does_not_shadow_the_standard_library():
    assert not (REPO / "operator" / "__init__.py").exists()
    stdlib_operator = importlib.import_module("operator")
    assert hasattr(stdlib_operator, "itemgetter")
    assert "site-packages" not in (stdlib_operator.__file__ or "")
    assert not str(stdlib_operator.__file__).startswith(str(REPO))


def imported_modules(source: str, module: str, is_package: bool = False) -> set[str]:
    """Every module `source` may import, as absolute names, wherever the import statement
    sits. `from a import b` yields both `a` and `a.b`, since `b` may be a submodule; a
    relative import is resolved against the package `module` belongs to."""
    package = module if is_package else module.rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0]
                base = f"{anchor}.{node.module}" if node.module else anchor
            else:
                base = node.module
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
    return names


def floor_of(module: str) -> str | None:
    """The floor a module lives on; None outside the project (or for a name of tuneforge's
    own __init__, such as __version__, which belongs to no floor)."""
    parts = module.split(".")
    if parts[0] in IMAGE_PACKAGES:
        return parts[0]
    if parts[0] == "tuneforge" and len(parts) > 1 and parts[1] in TOP_LEVEL_MODULES:
        return parts[1]
    return None


def layering_violations(source: str, module: str, is_package: bool = False) -> list[str]:
    if module == WIRING:
        return []
    own = floor_of(module)
    violations = []
    for imported in sorted(imported_modules(source, module, is_package)):
        floor = floor_of(imported)
        if floor is None or floor == own or floor in GROUND_FLOOR:
            continue
        where = "ground-floor" if own in GROUND_FLOOR else own
        violations.append(f"{where} module {module} imports {imported}")
    return violations


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


SOURCES = [(root, path) for root in SOURCE_ROOTS for path in sorted(root.rglob("*.py"))]


@pytest.mark.parametrize("root,path", SOURCES, ids=[str(path.relative_to(REPO)) for _, path in SOURCES])
def test_imports_respect_the_floors(root: Path, path: Path):
    module = module_name(path, root)
    assert layering_violations(path.read_text(), module, is_package=path.name == "__init__.py") == []


def test_every_module_of_the_package_is_on_a_floor():
    """A new top-level module must be given a floor, or the rules above would not cover it."""
    assert TOP_LEVEL_MODULES - {"__init__", "__main__"} <= GROUND_FLOOR | UPPER_FLOORS


FORBIDDEN = {
    "controllers imports the gateway package by name": ("tuneforge.controllers.jobs", "from tuneforge import gateway"),
    "controllers imports the gateway relatively": ("tuneforge.controllers.jobs", "from ..gateway import app"),
    "controllers imports the gateway package relatively": ("tuneforge.controllers.jobs", "from .. import gateway"),
    "controllers imports the local platform": ("tuneforge.controllers.jobs", "import tuneforge.local.devstack"),
    "controllers imports inside a function": (
        "tuneforge.controllers.jobs", "def wire():\n    from tuneforge.gateway.app import create_app\n"),
    "gateway imports __main__": ("tuneforge.gateway.app", "from tuneforge.__main__ import main"),
    "gateway __init__ imports controllers relatively": ("tuneforge.gateway", "from ..controllers import jobs"),
    "ground floor imports controllers by name": ("tuneforge.config", "from tuneforge import controllers"),
    "ground floor imports the gateway": ("tuneforge.storage", "from tuneforge.gateway.app import create_app"),
    "ground floor imports upward, three levels up": ("tuneforge.api.v1alpha1.labels", "from ... import local"),
    "ground floor imports an image": ("tuneforge.weights", "import tuneforge_trainer.model"),
    "trainer imports controllers": ("tuneforge_trainer.loop", "from tuneforge.controllers import builders"),
    "inference imports the trainer": ("tuneforge_inference.cpu.app", "from tuneforge_trainer import data"),
}


@pytest.mark.parametrize("module,source", FORBIDDEN.values(), ids=FORBIDDEN.keys())
def test_the_checker_reports_each_forbidden_import(module: str, source: str):
    is_package = module == "tuneforge.gateway"
    assert layering_violations(source, module, is_package=is_package)


def test_the_checker_allows_the_ground_floor_and_the_module_s_own_floor():
    source = (
        "import tuneforge\n"
        "from tuneforge import __version__, config\n"
        "from tuneforge.api.v1alpha1 import labels\n"
        "from . import builders\n"
        "from .builders import trainer_job\n"
        "from .. import storage\n"
        "def later():\n"
        "    import tuneforge.controllers.jobs\n"
    )
    assert layering_violations(source, "tuneforge.controllers.batch") == []


def test_the_wiring_module_may_import_every_floor():
    source = "from tuneforge import controllers, gateway, local\n"
    assert layering_violations(source, WIRING) == []


@pytest.mark.parametrize("relative,expected", [
    ("tuneforge/gateway/app.py", "tuneforge.gateway.app"),
    ("tuneforge/gateway/__init__.py", "tuneforge.gateway"),
    ("tuneforge_inference/batch/runner.py", "tuneforge_inference.batch.runner"),
])
def test_a_file_s_module_name_is_its_path_under_its_source_root(relative: str, expected: str):
    assert module_name(Path("/src") / relative, Path("/src")) == expected


def _floor_paragraph(title: str) -> str:
    """The bullet of docs/architecture.md's "Floors" section that starts with `title`."""
    text = (REPO / "docs" / "architecture.md").read_text()
    section = text.split("## Floors", 1)[1].split("\n## ", 1)[0]
    bullet = next(part for part in section.split("\n- ") if part.startswith(title))
    return " ".join(bullet.split())


def test_the_architecture_document_names_the_floors_the_code_has():
    """The document a new engineer reads first must not describe floors the test does not
    enforce: every module named on the ground floor (the first name in each backticked
    `tuneforge.x` or `x`, before any `.`) is one, and every wing is named among the wings."""
    ground = {
        name.removeprefix("tuneforge.").split(".")[0]
        for name in re.findall(r"`([a-z_.]+)`", _floor_paragraph("**The ground floor**"))
    }
    assert ground == GROUND_FLOOR
    wings = _floor_paragraph("**The wings**")
    for wing in UPPER_FLOORS:
        assert f"`tuneforge.{wing}`" in wings or f"/{wing}`" in wings, wing
