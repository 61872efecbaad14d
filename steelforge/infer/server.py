"""`steelforge serve MODEL`: an OpenAI-compatible HTTP server (FastAPI + uvicorn) with dynamic batching.

Endpoints: `POST /v1/chat/completions` and `POST /v1/completions` (JSON or SSE with `"stream": true`),
`GET /v1/models`, `GET /health`. One worker thread owns the model: requests that arrive within
`batch_wait_ms` of each other (up to `max_batch_size`) are decoded together in one batched `generate` call.
Requests wait in a bounded queue; when it is full the answer is 503. A client that disconnects has its
request cancelled (its row stops streaming; the batch stops when no live row is left). Errors are
OpenAI-style JSON (`{"error": {"message", "type", "param", "code"}}`) with 4xx codes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import secrets
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from steelforge.infer.chat import TextStream, render_prompt
from steelforge.infer.generation import LoadedModel, generate

API_KEY_ENV = "STEELFORGE_API_KEY"
SWITCH_INTERVAL_S = 0.0005


class APIError(Exception):
    """An error answered as OpenAI-style JSON."""

    def __init__(self, status: int, message: str, *, type_: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status)


# ---- the batching engine ----------------------------------------------------------------------------
@dataclass
class Job:
    """One completion request on its way through the engine; events go back to the request's event loop."""

    prompt_ids: list[int]
    max_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    tokens: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    stream: TextStream | None = None

    def emit(self, kind: str, value: Any) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))

    @property
    def live(self) -> bool:
        return self.finish_reason is None and not self.cancelled.is_set()


def _deliver(events: list[tuple[Job, str, Any]]) -> None:
    for job, kind, value in events:
        job.events.put_nowait((kind, value))


def _emit_step(events: list[tuple[Job, str, Any]]) -> None:
    """One wake-up of each event loop per decoding step, not one per token (less GIL ping-pong)."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Job, str, Any]]] = {}
    for event in events:
        by_loop.setdefault(event[0].loop, []).append(event)
    for loop, batch in by_loop.items():
        loop.call_soon_threadsafe(_deliver, batch)


class BatchEngine:
    """Owns the model on one thread and decodes whatever requests arrived together as one batch."""

    def __init__(self, loaded: LoadedModel, *, max_batch_size: int = 16, batch_wait_ms: float = 5.0,
                 max_queue: int = 64) -> None:
        self.loaded = loaded
        self.max_batch_size = max_batch_size
        self.batch_wait_s = batch_wait_ms / 1000.0
        self.queue: queue.Queue[Job | None] = queue.Queue(maxsize=max_queue)
        self.stats = {"requests": 0, "batches": 0, "largest_batch": 0, "cancelled": 0, "rejected": 0, "tokens": 0}
        self._thread = threading.Thread(target=self._run, name="steelforge-engine", daemon=True)
        self._stopping = False
        self._lock = threading.Lock()
        self._active = 0  # submitted and not finished
        self._concurrent_until = 0.0  # until then, a new batch waits for company

    def start(self) -> BatchEngine:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping = True
        with contextlib.suppress(queue.Full):
            self.queue.put(None, timeout=5)
        self._thread.join(timeout=30)

    def submit(self, job: Job) -> None:
        with self._lock:
            if self._active > 0:  # clients overlap: batching pays, so batches wait batch_wait_ms for company
                self._concurrent_until = time.monotonic() + 2.0
            self._active += 1
        try:
            self.queue.put_nowait(job)
        except queue.Full:
            with self._lock:
                self._active -= 1
            self.stats["rejected"] += 1
            raise APIError(503, "the server is at capacity (request queue full); retry shortly",
                           type_="server_error", code="queue_full") from None
        self.stats["requests"] += 1

    def healthy(self) -> bool:
        return self._thread.is_alive()

    def _collect(self, first: Job) -> list[Job]:
        """The first job plus whatever follows it closely: collection ends after a gap of `batch_wait_ms`
        without a new request (a burst of clients is taken whole), or at 4x that wait in all."""
        batch = [first]
        if time.monotonic() > self._concurrent_until and self.queue.empty():
            return batch  # a lone client: no waiting, first-token latency as with plain generate
        deadline = time.monotonic() + 4 * self.batch_wait_s
        while len(batch) < self.max_batch_size:
            remaining = min(self.batch_wait_s, deadline - time.monotonic())
            try:
                job = self.queue.get(timeout=remaining) if remaining > 0 else self.queue.get_nowait()
            except queue.Empty:
                break
            if job is None:
                self._stopping = True
                break
            batch.append(job)
        return batch

    def _run(self) -> None:
        while not self._stopping:
            first = self.queue.get()
            if first is None:
                return
            batch = []
            for job in self._collect(first):
                if job.cancelled.is_set():
                    self._finish(job, "cancelled")
                else:
                    batch.append(job)
            groups: dict[tuple[float, float], list[Job]] = {}
            for job in batch:
                groups.setdefault((job.temperature, job.top_p), []).append(job)
            for jobs in groups.values():
                try:
                    self._decode(jobs)
                except Exception as exc:  # the model failed: every request of the batch hears it
                    for job in jobs:
                        if job.finish_reason is None:
                            self._finish(job, "error")
                        job.emit("error", f"generation failed: {exc}")

    def _finish(self, job: Job, reason: str) -> None:
        job.finish_reason = reason
        with self._lock:
            self._active -= 1
        if reason == "cancelled":
            self.stats["cancelled"] += 1

    def _decode(self, jobs: list[Job]) -> None:
        loaded = self.loaded
        stops = set(loaded.stop_token_ids)
        self.stats["batches"] += 1
        self.stats["largest_batch"] = max(self.stats["largest_batch"], len(jobs))
        for job in jobs:
            job.stream = TextStream(loaded.tokenizer)

        def on_tokens(step: list[int | None]) -> None:
            events: list[tuple[Job, str, Any]] = []
            for job, token in zip(jobs, step, strict=True):
                if token is None or not job.live:
                    continue
                if token in stops:
                    self._finish(job, "stop")
                    events.append((job, "done", "stop"))
                    continue
                job.tokens.append(token)
                self.stats["tokens"] += 1
                piece = job.stream.push(token)
                if piece:
                    events.append((job, "delta", piece))
                if len(job.tokens) >= job.max_tokens:
                    self._finish(job, "length")
                    events.append((job, "done", "length"))
            if events:
                _emit_step(events)

        seed = jobs[0].seed if jobs[0].seed is not None else secrets.randbits(32)
        generate(
            loaded.model, [j.prompt_ids for j in jobs], max_new_tokens=max(j.max_tokens for j in jobs),
            temperature=jobs[0].temperature, top_p=jobs[0].top_p, stop_token_ids=loaded.stop_token_ids,
            pad_token_id=loaded.pad_token_id, generator=torch.Generator().manual_seed(seed),
            on_tokens=on_tokens, should_stop=lambda: not any(j.live for j in jobs),
        )
        for job in jobs:
            if job.finish_reason is not None:
                continue
            if job.cancelled.is_set():
                self._finish(job, "cancelled")
            else:
                self._finish(job, "length")
                job.emit("done", "length")


# ---- request bodies ------------------------------------------------------------------------------------
class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stream: bool = False
    n: int = Field(1, ge=1, le=1, description="only one choice per prompt")
    seed: int | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant"]
    content: str


class ChatRequest(_Body):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)


class CompletionRequest(_Body):
    prompt: str | list[str]
    max_tokens: int = Field(16, ge=1)


# ---- the app ---------------------------------------------------------------------------------------------
def create_app(engine: BatchEngine, *, model_name: str, api_key: str | None = None, raw_chat: bool = False) -> FastAPI:
    """The FastAPI app around a started engine (the caller owns the engine's lifetime)."""
    app = FastAPI(title="steelforge", docs_url=None, redoc_url=None)
    loaded = engine.loaded
    created = int(time.time())

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"msg": "invalid request", "loc": ()}
        if first.get("type") == "json_invalid":
            return APIError(400, "the request body is not valid JSON", code="invalid_json").response()
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        param = ".".join(loc) or None
        return APIError(400, f"{param or 'body'}: {first.get('msg')}", param=param, code="invalid_value").response()

    @app.middleware("http")
    async def _auth(request: Request, call_next: Any) -> Any:
        if api_key and request.url.path.startswith("/v1/"):
            given = request.headers.get("authorization", "")
            if not secrets.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
                return APIError(401, "missing or wrong API key; send 'Authorization: Bearer KEY'",
                                code="invalid_api_key").response()
        return await call_next(request)

    @app.get("/health")
    async def health() -> JSONResponse:
        ok = engine.healthy()
        return JSONResponse({"status": "ok" if ok else "engine stopped", "model": model_name,
                             "queued": engine.queue.qsize(), **engine.stats}, status_code=200 if ok else 503)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": created, "owned_by": "steelforge"}]}

    def check_model(name: str) -> None:
        if name != model_name:
            raise APIError(404, f"model '{name}' does not exist; this server serves '{model_name}'",
                           param="model", code="model_not_found")

    def make_job(ids: list[int], max_tokens: int | None, body: _Body) -> Job:
        room = loaded.max_context - len(ids)
        if max_tokens is None:
            max_tokens = min(256, room)
        if room < 1 or max_tokens > room:
            raise APIError(400, f"prompt ({len(ids)} tokens) plus max_tokens ({max_tokens}) exceeds the model's context "
                           f"of {loaded.max_context} tokens; lower max_tokens or shorten the prompt",
                           param="max_tokens", code="context_length_exceeded")
        return Job(ids, max_tokens, body.temperature, body.top_p, body.seed, asyncio.get_running_loop())

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest, request: Request) -> Any:
        check_model(body.model)
        messages = [m.model_dump() for m in body.messages]
        try:
            ids = render_prompt(loaded, messages, raw=raw_chat)
        except Exception as exc:
            raise APIError(400, f"messages cannot be rendered with the chat template: {exc}", param="messages") from None
        job = make_job(ids, body.max_completion_tokens or body.max_tokens, body)
        engine.submit(job)
        rid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        if body.stream:
            return StreamingResponse(_chat_stream(job, rid, model_name, created), media_type="text/event-stream")
        await _wait([job], request)
        text = job.stream.text() if job.stream else ""
        return {
            "id": rid, "object": "chat.completion", "created": int(time.time()), "model": model_name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": job.finish_reason, "logprobs": None}],
            "usage": _usage([job]),
        }

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Any:
        check_model(body.model)
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if not prompts:
            raise APIError(400, "prompt: give a string or a non-empty list of strings", param="prompt")
        if body.stream and len(prompts) > 1:
            raise APIError(400, "stream: streaming supports one prompt per request", param="stream")
        jobs = [make_job(loaded.tokenizer(p).input_ids, body.max_tokens, body) for p in prompts]
        try:
            for job in jobs:
                engine.submit(job)
        except APIError:
            for job in jobs:
                job.cancelled.set()
            raise
        rid = f"cmpl-{uuid.uuid4().hex[:24]}"
        if body.stream:
            return StreamingResponse(_completion_stream(jobs[0], rid, model_name), media_type="text/event-stream")
        await _wait(jobs, request)
        return {
            "id": rid, "object": "text_completion", "created": int(time.time()), "model": model_name,
            "choices": [{"index": i, "text": job.stream.text() if job.stream else "", "finish_reason": job.finish_reason,
                         "logprobs": None} for i, job in enumerate(jobs)],
            "usage": _usage(jobs),
        }

    return app


def _usage(jobs: list[Job]) -> dict[str, int]:
    prompt = sum(len(j.prompt_ids) for j in jobs)
    completion = sum(len(j.tokens) for j in jobs)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


async def _wait(jobs: list[Job], request: Request) -> None:
    """Wait for every job of a request to end; a client that goes away cancels them all."""
    for job in jobs:
        while True:
            try:
                kind, value = await asyncio.wait_for(job.events.get(), timeout=0.25)
            except TimeoutError:
                if await request.is_disconnected():
                    for other in jobs:
                        other.cancelled.set()
                    raise APIError(499, "client closed the request", code="cancelled") from None
                continue
            if kind == "done":
                break
            if kind == "error":
                raise APIError(500, value, type_="server_error")


async def _events(job: Job) -> AsyncIterator[tuple[str, Any]]:
    """A job's events until it ends; leaving early (the client disconnected) cancels the job."""
    try:
        while True:
            kind, value = await job.events.get()
            yield kind, value
            if kind in ("done", "error"):
                return
    finally:
        if job.finish_reason is None:
            job.cancelled.set()


def _sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


async def _chat_stream(job: Job, rid: str, model: str, created: int) -> AsyncIterator[str]:
    def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
        return _sse({"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
                     "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]})

    yield chunk({"role": "assistant", "content": ""})
    async for kind, value in _events(job):
        if kind == "delta":
            yield chunk({"content": value})
        elif kind == "done":
            yield chunk({}, value)
        else:
            yield _sse({"error": {"message": value, "type": "server_error", "param": None, "code": None}})
    yield "data: [DONE]\n\n"


async def _completion_stream(job: Job, rid: str, model: str) -> AsyncIterator[str]:
    def chunk(text: str, finish: str | None = None) -> str:
        return _sse({"id": rid, "object": "text_completion", "created": int(time.time()), "model": model,
                     "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}]})

    async for kind, value in _events(job):
        if kind == "delta":
            yield chunk(value)
        elif kind == "done":
            yield chunk("", value)
        else:
            yield _sse({"error": {"message": value, "type": "server_error", "param": None, "code": None}})
    yield "data: [DONE]\n\n"


def resolve_api_key(api_key: str | None) -> str | None:
    """`--api-key`, else the STEELFORGE_API_KEY environment variable, else none (open server)."""
    return api_key or os.environ.get(API_KEY_ENV) or None


def serve(
    model_dir: str, *, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
    model_name: str | None = None, int8: bool = False, chat_template: str | None = None, raw_chat: bool = False,
    max_batch_size: int = 16, batch_wait_ms: float = 5.0, max_queue: int = 64, threads: int | None = None,
) -> None:
    """Load the model, start the engine, and run uvicorn until interrupted."""
    import uvicorn

    from steelforge.infer.generation import load_for_inference
    from steelforge.reporting import console

    loaded = load_for_inference(model_dir, int8=int8, chat_template=chat_template, threads=threads)
    # The event loop and the engine thread hand every request and token to each other: a short GIL switch
    # interval (default 5 ms) keeps each hand-off from waiting for the other thread's time slice.
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    engine = BatchEngine(loaded, max_batch_size=max_batch_size, batch_wait_ms=batch_wait_ms, max_queue=max_queue).start()
    name = model_name or loaded.name
    key = resolve_api_key(api_key)
    app = create_app(engine, model_name=name, api_key=key, raw_chat=raw_chat)
    console.print(f"serving [bold]{name}[/] on http://{host}:{port}/v1 (API key {'required' if key else 'off'}); Ctrl-C stops")
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning")
    finally:
        engine.stop()
