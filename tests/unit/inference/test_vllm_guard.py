"""ServingTokenMiddleware on a tiny ASGI app, no vLLM: which paths it opens, which tokens
it takes, and that it refuses to exist without one. (test_vllm_contract.py runs it inside
vLLM's own app.)"""

from __future__ import annotations

import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient, WebSocketDenialResponse

from tuneforge.serving_auth import TOKEN_ENV, bearer

from tuneforge_inference.vllm_guard import OPEN_PATHS, MissingServingToken, ServingTokenMiddleware

TOKEN = "deployment-token"
UNAUTHORIZED = b'{"error":"Unauthorized"}'


class Recorder:
    """An ASGI app answering 200 with the path it was reached on, recording every scope;
    WebSockets are accepted and closed."""

    def __init__(self) -> None:
        self.reached: list[tuple[str, str]] = []

    async def __call__(self, scope, receive, send) -> None:
        self.reached.append((scope["type"], scope.get("path", "")))
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
        elif scope["type"] == "websocket":
            await receive()
            await send({"type": "websocket.accept"})
            await send({"type": "websocket.close", "code": 1000})
        else:
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": scope["path"].encode()})


@pytest.fixture
def guarded(monkeypatch: pytest.MonkeyPatch) -> tuple[TestClient, Recorder]:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    inner = Recorder()
    return TestClient(ServingTokenMiddleware(inner)), inner


def test_only_the_probe_and_scrape_paths_are_open(guarded):
    client, inner = guarded
    assert OPEN_PATHS == {"/health", "/metrics"}
    for path in sorted(OPEN_PATHS):
        response = client.get(path)
        assert (response.status_code, response.content) == (200, path.encode())
    assert inner.reached == [("http", "/health"), ("http", "/metrics")]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/adapters"),
        ("DELETE", "/adapters/x"),
        ("POST", "/v1/load_lora_adapter"),
        ("POST", "/v1/unload_lora_adapter"),
        ("POST", "/v1/chat/completions"),
        ("POST", "/invocations"),
        ("POST", "/scale_elastic_ep"),
        ("GET", "/ping"),
        ("GET", "/version"),
        ("GET", "/"),
        # Only the exact open paths: vLLM mounts Prometheus under every /metrics* path.
        ("GET", "/metrics/"),
        ("GET", "/metricsx"),
        ("GET", "/health/x"),
        ("GET", "/healthz"),
        # CORS preflight too: the engine has no browser callers.
        ("OPTIONS", "/v1/models"),
    ],
)
def test_every_other_route_needs_the_token(guarded, method, path):
    client, inner = guarded
    response = client.request(method, path)
    assert (response.status_code, response.content) == (401, UNAUTHORIZED)
    assert response.headers["content-type"] == "application/json"
    assert response.headers["www-authenticate"] == "Bearer"
    assert inner.reached == []
    response = client.request(method, path, headers=bearer(TOKEN))
    assert response.status_code == 200
    assert inner.reached == [("http", path)]


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        "Bearer wrong-token",
        f"Bearer {TOKEN}x",
        f"Bearer {TOKEN[:-1]}",
        f"Basic {TOKEN}",
        TOKEN,
        f"Token {TOKEN}",
    ],
)
def test_a_missing_or_wrong_token_is_refused(guarded, authorization):
    client, inner = guarded
    headers = {} if authorization is None else {"Authorization": authorization}
    response = client.post("/adapters", json={"name": "a", "src": "/x"}, headers=headers)
    assert (response.status_code, response.content) == (401, UNAUTHORIZED)
    assert inner.reached == []


@pytest.mark.parametrize("authorization", [f"Bearer {TOKEN}", f"bearer {TOKEN}", f"BEARER  {TOKEN} "])
def test_the_right_token_passes_as_serving_auth_reads_it(guarded, authorization):
    client, inner = guarded
    response = client.post("/adapters", headers={"Authorization": authorization})
    assert response.status_code == 200 and inner.reached == [("http", "/adapters")]


def test_paths_are_judged_below_the_root_path(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    client = TestClient(ServingTokenMiddleware(Recorder()), root_path="/engine")
    assert client.get("/health").status_code == 200
    assert client.post("/adapters").status_code == 401


def test_websockets_need_the_token(guarded):
    client, inner = guarded
    with pytest.raises(WebSocketDenialResponse) as denied:
        with client.websocket_connect("/v1/realtime"):
            pass
    assert (denied.value.status_code, denied.value.content) == (401, UNAUTHORIZED)
    assert inner.reached == []
    with client.websocket_connect("/v1/realtime", headers=bearer(TOKEN)):
        pass
    assert inner.reached == [("websocket", "/v1/realtime")]


async def test_a_server_without_the_denial_extension_gets_a_refused_handshake(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    inner = Recorder()
    sent = []

    async def receive():
        return {"type": "websocket.connect"}

    async def send(message):
        sent.append(message)

    await ServingTokenMiddleware(inner)({"type": "websocket", "path": "/v1/realtime", "headers": []}, receive, send)
    assert sent == [{"type": "websocket.close", "code": 1008}] and inner.reached == []


def test_lifespan_passes_through(guarded):
    client, inner = guarded
    with client:
        pass
    assert inner.reached == [("lifespan", "")]


def test_added_as_vllm_adds_it(monkeypatch: pytest.MonkeyPatch):
    """vLLM's `--middleware` hands a class to `app.add_middleware` with no arguments."""
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    app = Starlette()
    app.add_route("/adapters", lambda request: None, methods=["POST"])
    app.add_middleware(ServingTokenMiddleware)
    client = TestClient(app)
    assert (client.post("/adapters").status_code, client.get("/health").status_code) == (401, 404)


@pytest.mark.parametrize("value", [None, "", "  "])
def test_no_token_no_middleware(monkeypatch: pytest.MonkeyPatch, value):
    """Rather than serve vLLM open, the middleware (and so vLLM's app) refuses to build."""
    if value is None:
        monkeypatch.delenv(TOKEN_ENV, raising=False)
    else:
        monkeypatch.setenv(TOKEN_ENV, value)
    with pytest.raises(MissingServingToken, match=TOKEN_ENV):
        ServingTokenMiddleware(Recorder())


def test_the_token_is_the_one_present_at_construction(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    client = TestClient(ServingTokenMiddleware(Recorder()))
    monkeypatch.setenv(TOKEN_ENV, "another-token")
    assert client.post("/adapters", headers=bearer(TOKEN)).status_code == 200
    assert client.post("/adapters", headers=bearer("another-token")).status_code == 401
