"""The HTTP layer of `angel serve`: OpenAI-compatible routes over the scheduler (FastAPI on uvicorn).

    app = build_app(state)     # state: ServerState (runtime, scheduler, metrics, names, api key)

Routes: POST /v1/chat/completions, POST /v1/completions, GET /v1/models, GET /health, GET /metrics.
A handler parses the body (angelcli/serve/protocol.py), submits a ServeRequest to the scheduler, and turns
its token events into text (angelcli/serve/output.py): one JSON response, or SSE `data:` chunks ended by
`data: [DONE]`. A client that goes away cancels its request (the scheduler retires it before its next
decode step): streamed responses watch the connection for http.disconnect, non-streamed ones too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
import uuid
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from angelcli.serve.output import TextOutput
from angelcli.serve.protocol import ApiError, Context, Job, parse_chat, parse_completion
from angelcli.serve.scheduler import NotAccepting, QueueFull, ServeRequest, TooLong

MAX_BODY = 16 * 2**20  # bytes; a larger request body gets 413


@dataclass
class ServerState:
    scheduler: object
    metrics: object
    ctx: Context
    api_key: str | None
    created: int
    spec_k: int | None = None


def _error(err: ApiError, metrics=None) -> JSONResponse:
    if metrics is not None:
        metrics.reject(err.status)
    return JSONResponse(err.body(), status_code=err.status)


def _sse(obj) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


class SSEResponse(StreamingResponse):
    """Streams SSE chunks and calls on_disconnect as soon as the client goes away (whatever the ASGI spec
    version: the connection is watched for http.disconnect while the body streams)."""

    def __init__(self, content, on_disconnect):
        super().__init__(content, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        self.on_disconnect = on_disconnect

    async def __call__(self, scope, receive, send) -> None:
        async def watch():
            while (await receive())["type"] != "http.disconnect":
                pass
            self.on_disconnect()

        watcher = asyncio.ensure_future(watch())
        try:
            await self.stream_response(send)
        except OSError:  # the client is gone
            self.on_disconnect()
        finally:
            watcher.cancel()
            await self.body_iterator.aclose()


def build_app(state: ServerState, lifespan=None) -> FastAPI:
    """lifespan: the caller's (starts / stops the scheduler); the app adds the hop of scheduler events
    onto its event loop (one call_soon_threadsafe per scheduler step, see Scheduler.post)."""
    sched, metrics, ctx = state.scheduler, state.metrics, state.ctx

    def deliver(batch) -> None:  # on the event loop
        for req, ev in batch:
            req.emit(ev)

    @contextlib.asynccontextmanager
    async def with_post(app):
        loop = asyncio.get_running_loop()
        sched.post = lambda batch: loop.call_soon_threadsafe(deliver, batch)
        if lifespan is None:
            yield
        else:
            async with lifespan(app):
                yield

    app = FastAPI(title="angel serve", docs_url=None, redoc_url=None, openapi_url=None, lifespan=with_post)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return _error(ApiError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}", None, code))

    @app.exception_handler(ApiError)
    async def _api_error(request, exc):
        return _error(exc, metrics)

    def auth(request: Request) -> None:
        if state.api_key is None:
            return
        got = request.headers.get("authorization", "")
        scheme, _, token = got.partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip().encode(), state.api_key.encode()):
            raise ApiError(401, "Incorrect or missing API key: send 'Authorization: Bearer <key>' "
                                "(the key given with --api-key / ANGEL_API_KEY)", None, "invalid_api_key")

    async def read_json(request: Request):
        size = request.headers.get("content-length")
        if size is not None and size.isdigit() and int(size) > MAX_BODY:
            raise ApiError(413, f"the request body is {int(size)} bytes; the limit is {MAX_BODY}", None,
                           "request_too_large")
        raw = await request.body()
        if len(raw) > MAX_BODY:
            raise ApiError(413, f"the request body is {len(raw)} bytes; the limit is {MAX_BODY}", None,
                           "request_too_large")
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ApiError(400, f"the request body is not valid JSON ({err})") from None

    @app.get("/health")
    async def health():
        return {"status": "ok" if sched.accepting else "shutting_down", "model": ctx.model_names[0],
                "batch_size": sched.batch_size, "queue": len(sched.pending)}

    @app.get("/metrics")
    async def prometheus(request: Request):
        auth(request)
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models(request: Request):
        auth(request)
        return {"object": "list", "data": [{"id": ctx.model_names[0], "object": "model", "created": state.created,
                                            "owned_by": "angel", "max_model_len": ctx.max_len}]}

    @app.get("/v1/models/{name:path}")
    async def model(name: str, request: Request):
        auth(request)
        if name not in ctx.model_names:
            raise ApiError(404, f"The model '{name}' does not exist", "model", "model_not_found")
        return {"id": name, "object": "model", "created": state.created, "owned_by": "angel",
                "max_model_len": ctx.max_len}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        auth(request)
        job = parse_chat(await read_json(request), ctx)
        return await run_job(request, job)

    @app.post("/v1/completions")
    async def completions(request: Request):
        auth(request)
        job = parse_completion(await read_json(request), ctx)
        return await run_job(request, job)

    async def run_job(request: Request, job: Job):
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        rid = ("chatcmpl-" if job.kind == "chat" else "cmpl-") + uuid.uuid4().hex[:24]
        # events arrive on this loop (Scheduler.post); without a post hook they come from its thread
        emit = queue.put_nowait if sched.post is not None else (
            lambda ev: loop.call_soon_threadsafe(queue.put_nowait, ev))
        req = ServeRequest(job.prompt_ids, job.params, emit, rid=rid, logprobs=job.logprobs)
        try:
            sched.submit(req)
        except QueueFull as err:
            raise ApiError(503, f"the server is busy: {err}; retry later", None, "queue_full") from None
        except NotAccepting as err:
            raise ApiError(503, str(err), None, "shutting_down") from None
        except TooLong as err:
            raise ApiError(400, f"{err}; lower max_tokens", "max_tokens", "context_length_exceeded") from None
        out = TextOutput(ctx.tokenizer, job.stop, split_think=job.kind == "chat", start_in_think=job.start_in_think)
        rs = _Render(job, rid, int(time.time()), out)
        if job.stream:
            return SSEResponse(_stream(queue, req, out, rs), req.cancel)

        async def watch():
            while (await request.receive())["type"] != "http.disconnect":
                pass
            req.cancel()

        watcher = asyncio.ensure_future(watch())
        try:
            async for _ in _events(queue, req, out, rs):
                pass
        finally:
            watcher.cancel()
            req.cancel()
        if rs.error:
            raise ApiError(500, f"generation failed: {rs.error}", None, "engine_error")
        return rs.whole()

    return app


async def _events(queue: asyncio.Queue, req: ServeRequest, out: TextOutput, rs: "_Render"):
    """Yield (deltas, logprob entries) until the request ends; rs records finish and usage. Tokens that
    queued up while the client was being served are taken together (one chunk for several tokens), so a
    slow consumer falls behind by chunks, not by a growing backlog of tiny writes."""
    while True:
        events = [await queue.get()]
        while not queue.empty():
            events.append(queue.get_nowait())
        deltas, lps = [], []
        for ev in events:
            if ev[0] == "token":
                step = ev[1]
                got = out.push(step)
                deltas += got
                lp = rs.logprob_entry(step) if not out.stopped or got else None
                if lp is not None:
                    lps.append(lp)
                if out.stopped:
                    req.cancel()  # a stop string: no more tokens are needed
            elif ev[0] == "end":
                rs.finish = "stop" if out.stopped else {"cancelled": "abort"}.get(ev[1], ev[1])
                rs.completion_tokens = len(out.token_ids)
                yield deltas + out.close(), lps
                return
            else:
                rs.error = ev[1]
                if deltas or lps:
                    yield deltas, lps
                return
        yield deltas, lps


async def _stream(queue, req, out, rs):
    try:
        yield _sse(rs.chunk([], [], first=True))
        async for deltas, lps in _events(queue, req, out, rs):
            if deltas or lps:
                yield _sse(rs.chunk(deltas, lps))
        if rs.error:
            yield _sse(ApiError(500, f"generation failed: {rs.error}", None, "engine_error").body())
        else:
            yield _sse(rs.chunk([], [], finish=rs.finish))
            if rs.job.include_usage:
                yield _sse(rs.usage_chunk())
        yield "data: [DONE]\n\n"
    finally:
        req.cancel()  # a no-op once the request is done; otherwise the client went away


class _Render:
    """Builds the OpenAI JSON objects of one request."""

    def __init__(self, job: Job, rid: str, created: int, out: TextOutput):
        self.job, self.rid, self.created, self.out = job, rid, created, out
        self.finish, self.error, self.completion_tokens = None, None, 0
        self.logprobs: list = []

    @property
    def chat(self) -> bool:
        return self.job.kind == "chat"

    def usage(self) -> dict:
        n = len(self.job.prompt_ids)
        return {"prompt_tokens": n, "completion_tokens": self.completion_tokens,
                "total_tokens": n + self.completion_tokens}

    def logprob_entry(self, step):
        if not self.job.logprobs or step.finish_reason == "stop":
            return None
        text = self.out.token_text(step.token_id)
        if self.chat:
            top = [{"token": (t := self.out.token_text(i)), "logprob": v, "bytes": list(t.encode())}
                   for i, v in step.top_logprobs]
            e = {"token": text, "logprob": step.logprob, "bytes": list(text.encode()), "top_logprobs": top}
        else:
            e = {"token": text, "logprob": step.logprob,
                 "top": {self.out.token_text(i): v for i, v in step.top_logprobs}}
        self.logprobs.append(e)
        return e

    def _lp_obj(self, entries):
        if not self.job.logprobs:
            return None
        if self.chat:
            return {"content": entries}
        off, offsets = 0, []
        for e in entries:
            offsets.append(off)
            off += len(e["token"])
        return {"tokens": [e["token"] for e in entries], "token_logprobs": [e["logprob"] for e in entries],
                "top_logprobs": [e["top"] for e in entries], "text_offset": offsets}

    def chunk(self, deltas, lps, *, first: bool = False, finish: str | None = None) -> dict:
        if self.chat:
            delta: dict = {"role": "assistant", "content": ""} if first else {}
            for kind, text in deltas:
                if kind == "reasoning":
                    delta["reasoning_content"] = delta.get("reasoning_content", "") + text
                    delta["reasoning"] = delta["reasoning_content"]
                else:
                    delta["content"] = delta.get("content", "") + text
            choice = {"index": 0, "delta": delta, "logprobs": self._lp_obj(lps) if lps else None,
                      "finish_reason": finish}
            obj = "chat.completion.chunk"
        else:
            choice = {"index": 0, "text": "".join(t for _, t in deltas),
                      "logprobs": self._lp_obj(lps) if lps else None, "finish_reason": finish}
            obj = "text_completion"
        d = {"id": self.rid, "object": obj, "created": self.created, "model": self.job.model, "choices": [choice]}
        if self.job.include_usage:
            d["usage"] = None
        return d

    def usage_chunk(self) -> dict:
        return {"id": self.rid, "object": "chat.completion.chunk" if self.chat else "text_completion",
                "created": self.created, "model": self.job.model, "choices": [], "usage": self.usage()}

    def whole(self) -> dict:
        if self.chat:
            msg = {"role": "assistant", "content": self.out.content_text}
            reasoning = self.out.reasoning_text
            if reasoning is not None:
                msg["reasoning_content"] = msg["reasoning"] = reasoning
            choice = {"index": 0, "message": msg, "logprobs": self._lp_obj(self.logprobs),
                      "finish_reason": self.finish}
            obj = "chat.completion"
        else:
            choice = {"index": 0, "text": self.out.content_text, "logprobs": self._lp_obj(self.logprobs),
                      "finish_reason": self.finish}
            obj = "text_completion"
        return {"id": self.rid, "object": obj, "created": self.created, "model": self.job.model,
                "choices": [choice], "usage": self.usage()}
