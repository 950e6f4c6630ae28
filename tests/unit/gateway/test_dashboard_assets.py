"""The dashboard's files as the gateway serves them: the vendored libraries are exactly
what `make ui-vendor` took from the pinned npm releases, every page and script is
served from the package with the security headers, and /docs points at those files,
never at a CDN. (The browser tests in tests/e2e/test_dashboard.py show the pages work.)"""

import hashlib
import json
import re
import tomllib
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tuneforge.gateway import dashboard
from tuneforge.gateway.app import create_app

UI = dashboard.STATIC.parent
VENDOR = dashboard.STATIC / "vendor"


@pytest.fixture(scope="module")
def browser() -> TestClient:
    """The app without its lifespan: static routes need neither Kubernetes nor a store."""
    return TestClient(create_app())


def test_vendored_files_are_the_pinned_releases():
    sums = dict(reversed(line.split("  ")) for line in (VENDOR / "SHA256SUMS").read_text().splitlines())
    on_disk = {p.relative_to(VENDOR).as_posix() for p in VENDOR.rglob("*") if p.is_file()} - {"SHA256SUMS"}
    assert set(sums) == on_disk
    for name, digest in sums.items():
        assert hashlib.sha256((VENDOR / name).read_bytes()).hexdigest() == digest, f"{name} differs from its release"
    lock = json.loads((UI / "vendor.json").read_text())
    expected = {f"{p['name']}/{Path(f).name}" for p in lock["packages"] for f in p["files"]}
    assert expected == on_disk
    assert all(p["integrity"].startswith("sha512-") for p in lock["packages"])


def test_every_module_the_page_imports_exists():
    """Relative imports of each app module and the import map's targets resolve to files,
    so a renamed module fails here rather than as a blank page."""
    index = (dashboard.STATIC / "index.html").read_text()
    import_map = json.loads(re.search(r'<script type="importmap">(.*?)</script>', index, re.DOTALL).group(1))
    for target in import_map["imports"].values():
        assert (dashboard.STATIC / target).is_file(), target
    for module in (dashboard.STATIC / "app").rglob("*.js"):
        for relative in re.findall(r'from "(\.{1,2}/[^"]+)"', module.read_text()):
            assert (module.parent / relative).resolve().is_file(), f"{module.name} imports missing {relative}"
        for bare in re.findall(r'from "([^./][^"]*)"', module.read_text()):
            assert bare in import_map["imports"], f"{module.name} imports {bare}, which the import map lacks"


def test_dashboard_is_served_with_a_strict_policy(browser: TestClient):
    page = browser.get("/ui/")
    assert page.status_code == 200 and 'src="app/main.js"' in page.text
    policy = page.headers["content-security-policy"]
    assert "script-src 'self' 'sha256-" in policy and "frame-ancestors 'none'" in policy
    assert "unsafe-inline" not in policy.split("script-src")[1].split(";")[0]
    assert page.headers["x-content-type-options"] == "nosniff"
    for asset in ("app/main.js", "style.css", "vendor/preact/preact.module.js", "vendor/uplot/uPlot.esm.js"):
        response = browser.get(f"/ui/{asset}")
        assert response.status_code == 200, asset
    assert browser.get("/ui/app/main.js").headers["content-type"].startswith(("text/javascript", "application/javascript"))
    assert browser.get("/ui/app/missing.js").status_code == 404


def test_policy_allows_exactly_the_import_map():
    index = (dashboard.STATIC / "index.html").read_text()
    assert len(dashboard.inline_script_hashes(index)) == 1
    tampered = index.replace('"preact":', '"preact" :')
    assert dashboard.inline_script_hashes(tampered) != dashboard.inline_script_hashes(index)


def test_root_and_bare_ui_lead_to_the_dashboard(browser: TestClient):
    assert browser.get("/", follow_redirects=False).headers["location"] == "/ui/"
    bare = browser.get("/ui", follow_redirects=False)
    assert bare.status_code in (301, 302, 307, 308) and bare.headers["location"].endswith("/ui/")


def test_api_reference_uses_no_cdn(browser: TestClient):
    docs = browser.get("/docs")
    assert docs.status_code == 200
    sources = re.findall(r'(?:src|href)="([^"]+)"', docs.text)
    assert sources and all(s.startswith("/") and not s.startswith("//") for s in sources), sources
    for source in sources:
        assert browser.get(source).status_code == 200, source
    assert browser.get("/redoc").status_code == 404


def test_the_package_data_carries_every_dashboard_file():
    """The image installs the package without -e: a file the package-data globs miss
    would be absent there and 404 in production while every local test passed."""
    globs = tomllib.loads((UI.parents[2] / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    package = UI.parent
    carried = {path for pattern in globs["tuneforge"] for path in package.glob(pattern) if path.is_file()}
    shipped = {path for path in UI.rglob("*") if path.is_file() and "__pycache__" not in path.parts}
    assert shipped - carried == set()
