"""The repository layout rules docs/architecture.md sets out."""

import ast
import importlib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "operator" / "tuneforge"
GROUND_FLOOR = {"api", "config", "contracts", "storage", "datasets", "weights", "apikeys", "jobfiles"}
UPPER_FLOORS = {"controllers", "gateway", "local"}


def test_operator_directory_does_not_shadow_the_standard_library():
    assert not (REPO / "operator" / "__init__.py").exists()
    stdlib_operator = importlib.import_module("operator")
    assert hasattr(stdlib_operator, "itemgetter")
    assert "site-packages" not in (stdlib_operator.__file__ or "")
    assert not str(stdlib_operator.__file__).startswith(str(REPO))


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def _floor_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] in ("tuneforge_trainer", "tuneforge_inference"):
        return parts[0]
    if parts[0] == "tuneforge" and len(parts) > 1:
        return parts[1]
    return None


SOURCES = sorted(
    [*PACKAGE.rglob("*.py"), *(REPO / "trainer-image").rglob("*.py"), *(REPO / "inference-image").rglob("*.py")]
)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(REPO)))
def test_imports_respect_the_floors(path: Path):
    """Controllers, gateway, trainer, inference and local import only the ground floor;
    the ground floor imports nothing above it. __main__ is the one place wiring them."""
    if path.name == "__main__.py" and path.parent == PACKAGE:
        return
    relative = path.relative_to(REPO).parts
    if relative[0] == "operator":
        own = relative[2].removesuffix(".py") if len(relative) > 3 or relative[2].endswith(".py") else relative[2]
    else:
        own = relative[1]
    for module in _imported_modules(path):
        floor = _floor_of(module)
        if floor is None or floor == own:
            continue
        if own in GROUND_FLOOR:
            assert floor in GROUND_FLOOR, f"ground-floor {path.name} imports {module}"
        else:
            assert floor in GROUND_FLOOR, f"{own} ({path.name}) imports {module}, which is not the ground floor"
