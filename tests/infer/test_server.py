"""`steelforge serve`: a real uvicorn server on 127.0.0.1 that the official openai client talks to."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi", reason="serving needs the [serve] extra")
pytest.importorskip("uvicorn", reason="serving needs the [serve] extra")
pytest.importorskip("openai", reason="the openai client is in the [dev] extra")

from steelforge.infer.generation import load_for_inference  # noqa: E402
from steelforge.infer.server import API_KEY_ENV, BatchEngine, create_app, resolve_api_key  # noqa: E402

pytestmark = pytest.mark.timeout(240)
MODEL = "tiny-steel"


class LiveServer:
    """uvicorn on 127.0.0.1 and a free port chosen by the OS, in a background thread."""

    def __init__(self, app: object) -> None:
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        sock = self.server.servers[0].sockets[0]
        host, self.port = sock.getsockname()[:2]
        assert host == "127.0.0.1" and sock.family == socket.AF_INET
        self.url = f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture(scope="module")
def loaded(steel_dir: Path):
    return load_for_inference(steel_dir)


@pytest.fixture(scope="module")
def live(loaded) -> Iterator[tuple[LiveServer, BatchEngine]]:
    engine = BatchEngine(loaded, max_batch_size=16, batch_wait_ms=20, max_queue=8).start()
    server = LiveServer(create_app(engine, model_name=MODEL))
    yield server, engine
    server.close()
    engine.stop()


def test_openai_client_chat_stream_and_completions(live: tuple[LiveServer, BatchEngine], loaded) -> None:
    from openai import OpenAI

    from steelforge.infer.chat import Sampling, one_shot

    server, _ = live
    client = OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    assert [m.id for m in client.models.list().data] == [MODEL]

    chat = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hello"}],
                                          max_tokens=8, temperature=0)
    expected = one_shot(loaded, ["hello"], Sampling(max_new_tokens=8, temperature=0.0))[0]
    assert chat.choices[0].message.content == expected["answer"]
    assert chat.choices[0].finish_reason in ("stop", "length")
    assert chat.usage.completion_tokens == expected["completion_tokens"]
    assert chat.usage.prompt_tokens == expected["prompt_tokens"]

    stream = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hello"}],
                                            max_tokens=8, temperature=0, stream=True)
    chunks = list(stream)
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) >= 2 and "".join(pieces) == expected["answer"]
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")

    comp = client.completions.create(model=MODEL, prompt=["The city of", "def "], max_tokens=5, temperature=0)
    assert [c.index for c in comp.choices] == [0, 1] and all(c.text for c in comp.choices)
    assert comp.usage.completion_tokens <= 10
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model=MODEL, prompt="The city of", max_tokens=5, temperature=0, stream=True))
    assert streamed == comp.choices[0].text


@pytest.mark.parametrize(
    ("path", "body", "status", "code"),
    [
        ("/v1/chat/completions", b"{not json", 400, "invalid_json"),
        ("/v1/chat/completions", {"model": "gpt-4", "messages": [{"role": "user", "content": "x"}]}, 404, "model_not_found"),
        ("/v1/chat/completions", {"model": MODEL}, 400, "invalid_value"),
        ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 10_000},
         400, "context_length_exceeded"),
        ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]}, 400, "invalid_value"),
        ("/v1/completions", {"model": MODEL, "prompt": "x", "temperature": -1}, 400, "invalid_value"),
        ("/v1/completions", {"prompt": "x"}, 400, "invalid_value"),
    ],
)
def test_malformed_requests_get_openai_json_errors(live: tuple[LiveServer, BatchEngine], path: str, body: object,
                                                   status: int, code: str) -> None:
    server, _ = live
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    res = httpx.post(server.url + path, content=content, headers={"content-type": "application/json"}, timeout=30)
    assert res.status_code == status
    error = res.json()["error"]
    assert error["code"] == code and error["message"] and "type" in error


def test_fifty_concurrent_requests_get_200_or_503(live: tuple[LiveServer, BatchEngine]) -> None:
    server, engine = live
    before = dict(engine.stats)

    def one(i: int) -> int:
        body = {"model": MODEL, "messages": [{"role": "user", "content": f"question {i}"}], "max_tokens": 6,
                "temperature": 0}
        res = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=120)
        if res.status_code == 503:
            assert res.json()["error"]["code"] == "queue_full"
        return res.status_code

    with ThreadPoolExecutor(50) as pool:
        codes = list(pool.map(one, range(50)))
    assert set(codes) <= {200, 503} and codes.count(200) >= 8
    assert engine.stats["largest_batch"] > 1  # concurrent requests were decoded together
    assert engine.stats["batches"] - before["batches"] < codes.count(200)
    health = httpx.get(f"{server.url}/health", timeout=10)
    assert health.status_code == 200 and health.json()["status"] == "ok"
    ok = httpx.post(f"{server.url}/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 2}, timeout=60)
    assert ok.status_code == 200


def test_client_disconnect_cancels_generation(live: tuple[LiveServer, BatchEngine]) -> None:
    server, engine = live
    cancelled = engine.stats["cancelled"]
    tokens = engine.stats["tokens"]
    body = {"model": MODEL, "messages": [{"role": "user", "content": "go on"}], "max_tokens": 1500,
            "temperature": 1.0, "stream": True}
    with httpx.Client(timeout=60) as client, client.stream("POST", f"{server.url}/v1/chat/completions", json=body) as res:
        assert res.status_code == 200
        lines = res.iter_lines()
        for line in lines:
            if '"content"' in line and '"content": ""' not in line:
                break
    deadline = time.monotonic() + 60
    while engine.stats["cancelled"] == cancelled and time.monotonic() < deadline:
        time.sleep(0.05)
    assert engine.stats["cancelled"] == cancelled + 1
    assert engine.stats["tokens"] - tokens < 1500  # stopped well before max_tokens


def test_api_key_is_required_when_set(loaded, monkeypatch: pytest.MonkeyPatch) -> None:
    from openai import AuthenticationError, OpenAI

    monkeypatch.setenv(API_KEY_ENV, "s3cret")
    assert resolve_api_key(None) == "s3cret" and resolve_api_key("given") == "given"
    engine = BatchEngine(loaded, max_queue=4).start()
    server = LiveServer(create_app(engine, model_name=MODEL, api_key=resolve_api_key(None)))
    try:
        res = httpx.get(f"{server.url}/v1/models", timeout=10)
        assert res.status_code == 401 and res.json()["error"]["code"] == "invalid_api_key"
        with pytest.raises(AuthenticationError):
            OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0).models.list()
        good = OpenAI(base_url=f"{server.url}/v1", api_key="s3cret", max_retries=0)
        reply = good.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=3)
        assert reply.choices[0].message.role == "assistant"
        assert httpx.get(f"{server.url}/health", timeout=10).status_code == 200
    finally:
        server.close()
        engine.stop()
