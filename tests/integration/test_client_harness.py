"""Loopback HTTP servers for the SDK tests (no tests here).

`ThreadedApp` runs an aiohttp application on its own event loop in a thread, so both the blocking `Client` and the
`AsyncClient` can call it from a test. `Recorder` is a native-API server that records every request exactly as it
arrived and answers from a script; it stands in only where the real servers cannot yet show something: the
`GET /v1/endpoints[/{name}]` description routes (added to local mode and the gateway by another change; local mode
today lists without `ready`, routers do not describe), scripted refusals (for retry counts) and an observable
long-poll. Everything else is tested against a real router and real local mode.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

from tests.support.processes import free_port


class ThreadedApp:
    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self.loop.run_forever, name=f"app-{self.port}", daemon=True)

    def start(self) -> ThreadedApp:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(timeout=10)
        return self

    async def _start(self) -> None:
        self._runner = web.AppRunner(self.app, handler_cancellation=True)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run `fn` on the server's loop (to touch its state safely)."""

        async def run() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout=10)

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, str]
    headers: CIMultiDict[str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


Answer = tuple[int, dict[str, str], bytes]


@dataclass
class Recorder:
    """A native-API server. `script[path]` holds answers given in turn (then the default one). Endpoints are
    described in the documented shape from `endpoints`. Tasks in `done` answer SUCCESS; others are held for the
    whole `wait` (a real long-poll) unless `finish(task_id)` is called meanwhile."""

    endpoints: list[dict[str, Any]] = field(default_factory=list)
    describe: bool = True
    listed: bool = True
    script: dict[str, list[Answer]] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    done: dict[str, Any] = field(default_factory=dict)
    finished: dict[str, asyncio.Event] = field(default_factory=dict)
    server: ThreadedApp | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return self.server.url

    def requests(self, path_prefix: str = "") -> list[Seen]:
        return [s for s in list(self.seen) if s.path.startswith(path_prefix)]

    def finish(self, task_id: str, result: Any) -> None:
        assert self.server is not None

        def mark() -> None:
            self.done[task_id] = result
            self.finished.setdefault(task_id, asyncio.Event()).set()

        self.server.call(mark)

    async def _record(self, request: web.Request) -> Seen:
        seen = Seen(
            request.method, request.path, dict(request.query), CIMultiDict(request.headers), await request.read()
        )
        self.seen.append(seen)
        return seen

    def _scripted(self, path: str) -> web.Response | None:
        answers = self.script.get(path)
        if not answers:
            return None
        status, headers, body = answers.pop(0)
        return web.Response(status=status, headers=headers, body=body, content_type="application/json")

    async def invoke(self, request: web.Request) -> web.StreamResponse:
        seen = await self._record(request)
        scripted = self._scripted(request.path)
        if scripted is not None:
            return scripted
        body = seen.json()
        mode = request.match_info["mode"]
        if mode == "async":
            return web.json_response({"task_id": f"task-{len(self.seen)}"}, status=202)
        if mode == "stream":
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            for word in body.get("args", {}).get("words", []):
                await response.write(b"data: " + json.dumps({"status": "SUCCESS", "result": word}).encode() + b"\n\n")
            await response.write_eof()
            return response
        return web.json_response({"status": "SUCCESS", "result": body.get("args"), "status_code": 200})

    async def task(self, request: web.Request) -> web.Response:
        await self._record(request)
        scripted = self._scripted(request.path)
        if scripted is not None:
            return scripted
        task_id = request.match_info["task_id"]
        wait = float(request.query.get("wait", "0"))
        if task_id not in self.done and wait > 0:
            event = self.finished.setdefault(task_id, asyncio.Event())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), wait)
        if task_id in self.done:
            body = {"task_id": task_id, "status": "SUCCESS", "result": self.done[task_id], "status_code": 200}
        else:
            body = {"task_id": task_id, "status": "PENDING", "result": None}
        return web.json_response(body)

    async def result(self, request: web.Request) -> web.Response:
        await self._record(request)
        scripted = self._scripted(request.path)
        return scripted or web.Response(status=404)

    async def listing(self, request: web.Request) -> web.Response:
        await self._record(request)
        if not self.listed:
            return web.Response(status=404, text="404: Not Found")
        return web.json_response({"endpoints": self.endpoints})

    async def description(self, request: web.Request) -> web.Response:
        await self._record(request)
        if not self.describe:
            return web.Response(status=404, text="404: Not Found")
        for item in self.endpoints:
            if item["name"] == request.match_info["name"]:
                return web.json_response(item)
        return web.json_response({"error": {"code": "not_found", "message": "unknown endpoint"}}, status=404)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/endpoints", self.listing)
        app.router.add_get("/v1/endpoints/{name}", self.description)
        app.router.add_post("/v1/endpoints/{name}/{mode}", self.invoke)
        app.router.add_get("/v1/tasks/{task_id}/result", self.result)
        app.router.add_get("/v1/tasks/{task_id}", self.task)
        return app

    def start(self) -> Recorder:
        self.server = ThreadedApp(self.app()).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()


@dataclass
class CallbackReceiver:
    """A callback target: records each POST's Authorization header and JSON body."""

    received: list[tuple[str | None, Any]] = field(default_factory=list)
    server: ThreadedApp | None = None

    async def handle(self, request: web.Request) -> web.Response:
        self.received.append((request.headers.get("Authorization"), await request.json()))
        return web.json_response({"ok": True})

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"{self.server.url}/callback"

    def start(self) -> CallbackReceiver:
        app = web.Application()
        app.router.add_post("/callback", self.handle)
        self.server = ThreadedApp(app).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()


def static_app(routes: dict[str, tuple[bytes, str]]) -> ThreadedApp:
    """A file server: path -> (body, content type)."""

    def handler(body: bytes, content_type: str) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def serve(request: web.Request) -> web.Response:
            return web.Response(body=body, content_type=content_type)

        return serve

    app = web.Application()
    for path, (body, content_type) in routes.items():
        app.router.add_get(path, handler(body, content_type))
    return ThreadedApp(app).start()
