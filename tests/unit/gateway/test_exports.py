"""Adapter and merged-model archives (tuneforge.gateway.exports) built from a real store,
local and S3, and read back with Python's tarfile."""

from __future__ import annotations

import asyncio
import io
import tarfile

import fsspec
import pytest

from tuneforge.gateway import exports
from tuneforge.gateway.errors import OpenAIError
from tuneforge.jobfiles import JobFiles
from tuneforge.storage import ArtifactStore, StoreError

from tests.support.s3 import new_bucket

LONG = "tokenizer-" + "x" * 120 + ".json"  # longer than ustar's 100-character names
FILES = {
    "adapter_config.json": b'{"r": 8}',
    "adapter_model.safetensors": bytes(range(256)) * 5 + b"tail",  # not a multiple of 512
    LONG: b"{}",
    "nested/special_tokens_map.json": b"",
}


def publish(store: ArtifactStore, namespace: str, job: str, directory: str = "adapter") -> str:
    path = JobFiles.of(store, namespace, job).path(directory)
    for name, data in FILES.items():
        store.write_bytes(f"{path}/{name}", data)
    return path


def archive(store: ArtifactStore, path: str, root: str = "ftjob-1-adapter", mtime: int = 1700000000) -> bytes:
    members = exports.archive_members(root, exports.directory_files(store, path), mtime)
    data = b"".join(exports.archive_chunks(store, members))
    assert len(data) == exports.archive_size(members)
    return data


def read(data: bytes) -> dict[str, tuple[tarfile.TarInfo, bytes | None]]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        return {info.name: (info, tar.extractfile(info).read() if info.isfile() else None) for info in tar}


@pytest.fixture
def store(tmp_path) -> ArtifactStore:
    return ArtifactStore(f"file://{tmp_path}/store")


def test_the_archive_holds_every_published_file_under_one_directory(store) -> None:
    members = read(archive(store, publish(store, "team-a", "ftjob-1")))
    assert list(members)[0] == "ftjob-1-adapter" and members["ftjob-1-adapter"][0].isdir()
    assert {name: data for name, (_, data) in members.items() if data is not None} == {
        f"ftjob-1-adapter/{name}": data for name, data in FILES.items()}
    assert {info.mtime for info, _ in members.values()} == {1700000000}
    assert {info.mode for info, data in members.values() if data is not None} == {0o644}


def test_archives_are_deterministic(store) -> None:
    path = publish(store, "team-a", "ftjob-1")
    assert archive(store, path) == archive(store, path)


def test_members_stream_in_bounded_chunks(store) -> None:
    """Memory stays flat whatever a member's size: no piece is larger than CHUNK."""
    path = store.path("team-a", "fine-tuning", "ftjob-1", "merged")
    weights = bytes(range(256)) * (10 * exports.CHUNK // 256 + 3)
    store.write_bytes(f"{path}/model.safetensors", weights)
    members = exports.archive_members("root", exports.directory_files(store, path), 0)
    pieces = list(exports.archive_chunks(store, members))
    assert max(map(len, pieces)) <= exports.CHUNK
    assert read(b"".join(pieces))["root/model.safetensors"][1] == weights


def test_members_of_8_gib_and_more_keep_their_size() -> None:
    size = 10 * 1024**3
    header = exports.tar_header("ftjob-1-merged/model.safetensors", size=size, mtime=0)
    with tarfile.open(fileobj=io.BytesIO(header), mode="r:") as tar:
        assert tar.next().size == size


def test_a_member_that_changed_size_cuts_the_archive_short(store) -> None:
    path = publish(store, "team-a", "ftjob-1")
    members = exports.archive_members("root", exports.directory_files(store, path), 0)
    store.write_bytes(f"{path}/adapter_config.json", b'{"r": 8, "lora_alpha": 16}')
    chunks = exports.archive_chunks(store, members)
    sent = b""
    with pytest.raises(StoreError, match="changed while it was being archived"):
        for chunk in chunks:
            sent += chunk
    assert b"lora_alpha" not in sent


def test_a_missing_directory_lists_nothing(store) -> None:
    assert exports.directory_files(store, store.path("team-a", "fine-tuning", "ftjob-1", "adapter")) == []


def test_s3_archives_see_files_published_after_an_earlier_look(s3_endpoint) -> None:
    """s3fs caches a process's listings; a gateway asked for an adapter before the trainer
    published it must still archive all of it afterwards."""
    store = ArtifactStore(new_bucket("tuneforge-exports"))
    path = JobFiles.of(store, "team-a", "ftjob-1").path("adapter")
    assert exports.directory_files(store, path) == []
    trainer = ArtifactStore(store.root)
    trainer.fs = fsspec.filesystem("s3", skip_instance_cache=True)
    publish(trainer, "team-a", "ftjob-1")
    members = read(archive(store, path))
    assert {name: data for name, (_, data) in members.items() if data is not None} == {
        f"ftjob-1-adapter/{name}": data for name, data in FILES.items()}


def resource(*, labels: dict | None = None, merge: bool = False) -> dict:
    return {"metadata": {"name": "ftjob-1", "namespace": "team-a", "labels": labels or {}},
            "spec": {"mergeAdapter": merge}, "status": {"phase": "Succeeded", "finishedAt": "2024-01-02T03:04:05Z"}}


def refusal(store: ArtifactStore, job: dict, export: exports.Export) -> OpenAIError:
    with pytest.raises(OpenAIError) as exc:
        asyncio.run(exports.archive_response(store, job, export, param="id"))
    return exc.value


def test_what_a_job_does_not_have_is_404(store) -> None:
    no_merge = refusal(store, resource(), exports.MERGED)
    assert (no_merge.status, no_merge.code, no_merge.param) == (404, "merged_model_not_found", "id")
    assert "mergeAdapter" in no_merge.message
    missing = refusal(store, resource(), exports.ADAPTER)
    assert (missing.status, missing.code) == (404, "adapter_not_found")
    publish(store, "team-a", "ftjob-1")
    publish(store, "team-a", "ftjob-1", "merged")
    for export in (exports.ADAPTER, exports.MERGED):
        deleted = refusal(store, resource(labels={"tuneforge.io/model-deleted": "true"}, merge=True), export)
        assert (deleted.status, deleted.code) == (404, export.missing_code) and "was deleted" in deleted.message


def test_the_response_names_the_archive_and_its_length(store) -> None:
    publish(store, "team-a", "ftjob-1", "merged")
    response = asyncio.run(exports.archive_response(store, resource(merge=True), exports.MERGED, param="id"))
    assert response.media_type == "application/x-tar"
    assert response.headers["content-disposition"] == 'attachment; filename="ftjob-1-merged.tar"'

    async def body() -> bytes:
        return b"".join([chunk async for chunk in response.body_iterator])

    data = asyncio.run(body())
    assert int(response.headers["content-length"]) == len(data)
    members = read(data)
    assert members["ftjob-1-merged/adapter_config.json"][1] == FILES["adapter_config.json"]
    assert {info.mtime for info, _ in members.values()} == {1704164645}
