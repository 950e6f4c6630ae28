"""Fills operator/tuneforge/ui/static/vendor/ from the npm packages pinned in
operator/tuneforge/ui/vendor.json (`make ui-vendor`).

The dashboard and /docs must work on air-gapped clusters, so their third-party scripts
ship inside the Python package instead of coming from a CDN. Each tarball is checked
against the integrity hash the lock names before anything is extracted, and the files
taken are recorded in SHA256SUMS, which a unit test compares with what is committed, so
a vendored file cannot be edited by hand or drift from its pinned release.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import shutil
import tarfile
from pathlib import Path

import httpx

UI = Path(__file__).resolve().parent.parent / "operator" / "tuneforge" / "ui"
LOCK = UI / "vendor.json"
VENDOR = UI / "static" / "vendor"
SUMS = "SHA256SUMS"


def _verified_tarball(registry: str, package: dict) -> bytes:
    name, version = package["name"], package["version"]
    url = f"{registry}/{name}/-/{name.rsplit('/', 1)[-1]}-{version}.tgz"
    response = httpx.get(url, follow_redirects=True, timeout=120)
    response.raise_for_status()
    algorithm, _, expected = package["integrity"].partition("-")
    actual = base64.b64encode(hashlib.new(algorithm, response.content).digest()).decode()
    if actual != expected:
        raise SystemExit(f"{name}@{version}: integrity mismatch ({algorithm} {actual}, lock says {expected})")
    return response.content


def vendor(lock: Path = LOCK, destination: Path = VENDOR) -> list[str]:
    spec = json.loads(lock.read_text())
    shutil.rmtree(destination, ignore_errors=True)
    sums = []
    for package in spec["packages"]:
        target = destination / package["name"]
        with tarfile.open(fileobj=io.BytesIO(_verified_tarball(spec["registry"], package)), mode="r:gz") as archive:
            for member in package["files"]:
                data = archive.extractfile(f"package/{member}").read()
                path = target / Path(member).name
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
                sums.append(f"{hashlib.sha256(data).hexdigest()}  {path.relative_to(destination).as_posix()}")
    (destination / SUMS).write_text("\n".join(sorted(sums, key=lambda line: line.split()[1])) + "\n")
    return sums


if __name__ == "__main__":
    for line in vendor():
        print(line)
