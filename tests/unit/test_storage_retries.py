"""Which store errors are retried, how the retries back off, and that the S3 client is
configured from the settings. Errors are built the way botocore and s3fs build them, so
the classification is checked against what the libraries really raise."""

from __future__ import annotations

import errno

import aiohttp
import pytest
import s3fs.core
from botocore.exceptions import ClientError, ConnectionClosedError, EndpointConnectionError, ReadTimeoutError
from botocore.parsers import ResponseParserError
from s3fs.errors import translate_boto_error

from tuneforge.config import settings
from tuneforge.storage import RetryPolicy, StoreError, filesystem, is_transient


def client_error(status: int, code: str, message: str = "") -> ClientError:
    response = {"Error": {"Code": code, "Message": message or code},
                "ResponseMetadata": {"HTTPStatusCode": status}}
    return ClientError(response, "GetObject")


def as_s3fs_raises(error: ClientError) -> Exception:
    """What s3fs raises once botocore and s3fs gave up: an OSError subclass chosen by
    error code, with botocore's error as its cause."""
    return translate_boto_error(error)


TRANSIENT_HTTP = [
    (503, "SlowDown"), (503, "503"), (500, "InternalError"), (500, "500"), (502, "502"), (504, "504"),
    (429, "TooManyRequests"), (400, "RequestTimeout"), (503, "ServiceUnavailable"),
]
PERMANENT_HTTP = [
    (404, "NoSuchKey"), (404, "404"), (403, "AccessDenied"), (403, "403"), (400, "InvalidArgument"),
    (400, "400"), (400, "MalformedXML"), (412, "PreconditionFailed"), (405, "MethodNotAllowed"),
]


@pytest.mark.parametrize(("status", "code"), TRANSIENT_HTTP)
def test_server_side_and_throttling_errors_are_transient(status, code):
    error = client_error(status, code)
    assert is_transient(error)
    assert is_transient(as_s3fs_raises(error))


@pytest.mark.parametrize(("status", "code"), PERMANENT_HTTP)
def test_missing_denied_and_bad_requests_are_permanent(status, code):
    error = client_error(status, code)
    assert not is_transient(error)
    assert not is_transient(as_s3fs_raises(error))


def test_s3fs_maps_503_to_ebusy_and_a_cause_free_ebusy_is_still_transient():
    translated = as_s3fs_raises(client_error(503, "SlowDown", "Please reduce your request rate."))
    assert isinstance(translated, OSError) and translated.errno == errno.EBUSY
    assert is_transient(OSError(errno.EBUSY, "Please reduce your request rate."))
    assert not is_transient(OSError(errno.ENOSPC, "No space left on device"))


@pytest.mark.parametrize("error", [
    EndpointConnectionError(endpoint_url="http://store:9000"),
    ConnectionClosedError(endpoint_url="http://store:9000"),
    ReadTimeoutError(endpoint_url="http://store:9000"),
    ResponseParserError("Unable to parse response, invalid XML received"),
    aiohttp.ServerDisconnectedError(),
    aiohttp.ClientPayloadError("Response payload is not completed"),
    ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"),
    TimeoutError(),
], ids=lambda e: type(e).__name__)
def test_connection_failures_are_transient(error):
    assert is_transient(error)


@pytest.mark.parametrize("error", [
    FileNotFoundError("bucket/key"), PermissionError("denied"), StoreError("no object"),
    ValueError("bad path"), IsADirectoryError("bucket/dir"),
], ids=lambda e: type(e).__name__)
def test_other_errors_are_permanent(error):
    assert not is_transient(error)


def test_a_permanent_error_raised_from_a_transient_one_stays_permanent():
    try:
        try:
            raise ConnectionResetError("reset")
        except ConnectionResetError as exc:
            raise StoreError("no object at bucket/key") from exc
    except StoreError as exc:
        assert not is_transient(exc)


def test_a_bug_while_handling_a_transient_error_is_not_retried():
    try:
        try:
            raise ConnectionResetError("reset")
        except ConnectionResetError:
            raise KeyError("Contents")  # implicit context, not a cause
    except KeyError as exc:
        assert not is_transient(exc)


class FakeTime:
    """A clock that only moves when the policy sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def policy(fake: FakeTime, *, deadline_s: float = 60.0, jitter: float = 1.0) -> RetryPolicy:
    return RetryPolicy(deadline_s=deadline_s, base_s=0.5, max_s=4.0, sleep=fake.sleep, clock=lambda: fake.now,
                       rand=lambda: jitter)


def failing(times: int, error: Exception):
    calls = []

    def operation():
        calls.append(1)
        if len(calls) <= times:
            raise error
        return "done"

    return operation, calls


def test_transient_faults_are_retried_with_exponential_backoff_up_to_the_cap():
    fake = FakeTime()
    operation, calls = failing(6, OSError(errno.EBUSY, "SlowDown"))
    assert policy(fake).call(operation, "read x") == "done"
    assert len(calls) == 7
    assert fake.sleeps == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_jitter_keeps_at_least_half_of_the_backoff():
    fake = FakeTime()
    operation, _ = failing(3, ConnectionResetError())
    policy(fake, jitter=0.0).call(operation, "read x")
    assert fake.sleeps == [0.25, 0.5, 1.0]


def test_a_permanent_error_raises_at_once():
    fake = FakeTime()
    operation, calls = failing(1, FileNotFoundError("bucket/key"))
    with pytest.raises(FileNotFoundError):
        policy(fake).call(operation, "read x")
    assert len(calls) == 1 and fake.sleeps == []


def test_retries_stop_at_the_deadline_with_the_last_error():
    fake = FakeTime()
    operation, calls = failing(100, OSError(errno.EBUSY, "SlowDown"))
    with pytest.raises(OSError, match="SlowDown"):
        policy(fake, deadline_s=10.0).call(operation, "write x")
    assert fake.now <= 10.0
    assert fake.sleeps == [0.5, 1.0, 2.0, 4.0]  # the next 4 s would pass the deadline
    assert len(calls) == 5


def test_a_zero_deadline_disables_the_retries():
    fake = FakeTime()
    operation, calls = failing(1, OSError(errno.EBUSY, "SlowDown"))
    with pytest.raises(OSError):
        policy(fake, deadline_s=0.0).call(operation, "write x")
    assert len(calls) == 1


@pytest.fixture
def retry_env(monkeypatch):
    def configure(**env: str) -> None:
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        settings.cache_clear()

    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    yield configure
    settings.cache_clear()


def test_the_s3_client_retries_as_the_settings_say(retry_env):
    retry_env(TUNEFORGE_STORE_RETRY_ATTEMPTS="6", TUNEFORGE_STORE_RETRY_MODE="adaptive")
    fs, path = filesystem("s3://bucket/prefix/key")
    assert path == "bucket/prefix/key"
    assert fs.retries == 6, "s3fs's own retries (SlowDown after botocore, interrupted downloads)"
    assert fs.s3.meta.config.retries == {"total_max_attempts": 6, "mode": "adaptive"}
    assert s3fs.core.CUSTOM_ERROR_HANDLER is is_transient, "s3fs retries what the store calls transient"


def test_the_defaults_retry_every_request_several_times(retry_env):
    retry_env()
    fs, _ = filesystem("s3://bucket/key")
    assert fs.s3.meta.config.retries == {"total_max_attempts": 5, "mode": "standard"}
    assert RetryPolicy.from_settings().deadline_s == 120.0


def test_local_filesystems_take_no_retry_options(tmp_path):
    fs, path = filesystem(str(tmp_path))
    assert path == str(tmp_path)
    assert not hasattr(fs, "config_kwargs")
