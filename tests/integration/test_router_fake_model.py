"""A scriptable model container for the router tests (no tests here): `python -m tests.integration.test_router_fake_model PORT`.

It speaks the router->model contract of docs/contracts.md and records what it saw, so tests can assert on the model's
side: the most concurrent calls it ever had, how many calls arrived, how many streams were cut by the caller.
Behaviour per request, from the JSON args: `sleep` (seconds), `hold` (wait at the named barrier until the test opens
it: `POST /gates/NAME`; `GET /gates/NAME` says how many calls wait there), `fail` (answer 500 with a traceback),
`invalid` (answer the bundle runtime's 400 `invalid_arguments` naming that argument), `big` (answer a JSON string of
that many bytes, written in 1 MiB pieces with its Content-Length, or chunked with `chunked`), `crash` (exit the process mid-request); streams:
`words`, `delay`, `first_delay`, `endless_event` (that many bytes of one event's data, never ended), `hold_before` (a barrier before the response headers), `hold_first` (a barrier after
the headers, before the first event), `fail_after`, `crash_after`. `/readyz` answers 503 until the file named by
FAKE_READY_FILE exists (when set). Tests use barriers, not sleeps, to make calls overlap.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import cloudpickle
from aiohttp import web

STATS: dict[str, Any] = {"calls": 0, "current": 0, "max_concurrent": 0, "streams_cancelled": 0, "streams_done": 0}
GATES: dict[str, asyncio.Event] = {}
WAITING: dict[str, int] = {}


async def hold(name: str) -> None:
    """Wait at the barrier `name` until a test opens it (`POST /gates/NAME`)."""
    gate = GATES.setdefault(name, asyncio.Event())
    WAITING[name] = WAITING.get(name, 0) + 1
    try:
        await gate.wait()
    finally:
        WAITING[name] -= 1


async def open_gate(request: web.Request) -> web.Response:
    GATES.setdefault(request.match_info["name"], asyncio.Event()).set()
    return web.json_response({"open": True})


async def gate_state(request: web.Request) -> web.Response:
    return web.json_response({"waiting": WAITING.get(request.match_info["name"], 0)})


async def big_answer(request: web.Request, size: int, *, chunked: bool = False) -> web.StreamResponse:
    """A JSON string of `size` bytes, sent piecewise with its Content-Length or chunked (never held whole)."""
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    if chunked:
        response.enable_chunked_encoding()
    else:
        response.content_length = size
    await response.prepare(request)
    piece = b"a" * (1 << 20)
    remaining = size - 2
    await response.write(b'"')
    while remaining > 0:
        chunk = piece if remaining >= len(piece) else piece[:remaining]
        await response.write(chunk)
        remaining -= len(chunk)
    await response.write(b'"')
    await response.write_eof()
    return response


def _error(status: int, code: str, message: str) -> web.Response:
    body = {"error": {"code": code, "message": message, "type": "ValueError", "traceback": f"Traceback: {message}"}}
    return web.json_response(body, status=status)


async def predict(request: web.Request) -> web.StreamResponse:
    STATS["calls"] += 1
    STATS["current"] += 1
    STATS["max_concurrent"] = max(STATS["max_concurrent"], STATS["current"])
    try:
        body = await request.read()
        if request.headers.get("X-Bundleserve-Input") == "raw":
            return web.json_response({"raw_bytes": len(body), "content_type": request.content_type})
        args = json.loads(body)
        if args.get("hold"):
            await hold(str(args["hold"]))
        if args.get("sleep"):
            await asyncio.sleep(float(args["sleep"]))
        if args.get("big"):
            return await big_answer(request, int(args["big"]), chunked=bool(args.get("chunked")))
        if args.get("invalid"):
            message = f"predict: unexpected argument '{args['invalid']}'"
            error = {"error": {"code": "invalid_arguments", "message": message, "type": None, "traceback": None}}
            return web.json_response(error, status=400)
        if args.get("crash"):
            os._exit(3)
        if args.get("fail"):
            return _error(500, "model_error", str(args["fail"]))
        if request.headers.get("X-Bundleserve-Return") == "pickle":
            return web.Response(body=cloudpickle.dumps(args), content_type="application/vnd.bundleserve.pickle")
        return web.json_response(args)
    finally:
        STATS["current"] -= 1


async def stream(request: web.Request) -> web.StreamResponse:
    args = json.loads(await request.read())
    if args.get("fail_before"):
        return _error(500, "model_error", "failed before streaming")
    if args.get("hold_before"):
        try:
            await hold(str(args["hold_before"]))  # no headers yet (a generator that has not yielded)
        except asyncio.CancelledError:
            STATS["streams_cancelled"] += 1
            raise
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    try:
        if args.get("hold_first"):
            await hold(str(args["hold_first"]))  # headers are out, the first event never comes until opened
        if args.get("first_delay"):
            await asyncio.sleep(float(args["first_delay"]))  # headers are out, the first event is late
        if args.get("endless_event"):  # one event that never ends: this many bytes of data, no blank line
            await response.write(b"data: ")
            for _ in range(int(args["endless_event"]) // (1 << 20)):
                await response.write(b"a" * (1 << 20))
        for index, word in enumerate(args.get("words", [])):
            if args.get("fail_after") is not None and index >= args["fail_after"]:
                error = {"error": {"code": "model_error", "message": "boom mid-stream", "traceback": "Traceback: boom"}}
                await response.write(b"event: error\ndata: " + json.dumps(error).encode() + b"\n\n")
                break
            await response.write(b"data: " + json.dumps(word).encode() + b"\n\n")
            if args.get("crash_after") is not None and index + 1 >= args["crash_after"]:
                os._exit(3)
            if args.get("delay"):
                await asyncio.sleep(float(args["delay"]))
        await response.write_eof()
        STATS["streams_done"] += 1
    except (asyncio.CancelledError, ConnectionError):
        STATS["streams_cancelled"] += 1
        raise
    return response


async def ready(request: web.Request) -> web.Response:
    marker = os.environ.get("FAKE_READY_FILE")
    if marker and not Path(marker).exists():
        return _error(503, "not_ready", "loading")
    return web.json_response({"ready": True})


async def stats(request: web.Request) -> web.Response:
    return web.json_response(STATS)


async def reset(request: web.Request) -> web.Response:
    STATS.update(calls=0, current=0, max_concurrent=0, streams_cancelled=0, streams_done=0)
    return web.json_response(STATS)


def make_app() -> web.Application:
    app = web.Application(client_max_size=512 * 1024 * 1024)  # the memory tests send bodies up to 150 MiB
    app.router.add_post("/predict", predict)
    app.router.add_post("/stream", stream)
    app.router.add_get("/readyz", ready)
    app.router.add_get("/stats", stats)
    app.router.add_post("/stats/reset", reset)
    app.router.add_post("/gates/{name}", open_gate)
    app.router.add_get("/gates/{name}", gate_state)
    return app


# -- harness used by the router tests ---------------------------------------------------------------------------


def write_endpoint(
    directory: Path,
    *,
    name: str = "fake",
    modes: tuple[str, ...] = ("sync", "streaming"),
    invocation: dict[str, Any] | None = None,
) -> Path:
    """An Endpoint manifest for a Python bundle (the fake model serves the bundle runtime's routes)."""
    import yaml

    document = {
        "apiVersion": "bundleserve.dev/v1alpha1",
        "kind": "Endpoint",
        "metadata": {"name": name},
        "spec": {
            "modes": list(modes),
            "localOnly": True,
            "bundle": {"python": {"entrypoint": "fake:predict"}},
            "invocation": invocation or {},
        },
    }
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def start_model(directory: Path, *, ready_file: Path | None = None) -> tuple[Any, str]:
    from tests.support.processes import Server, free_port

    port = free_port()
    env = {"FAKE_READY_FILE": str(ready_file)} if ready_file else {}
    server = Server(
        [sys.executable, "-m", "tests.integration.test_router_fake_model", str(port)],
        log_path=directory / f"model-{port}.log",
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    server.wait_http(f"{url}/stats")
    return server, url


def start_router(
    directory: Path, endpoint_file: Path, model_url: str, *, env: dict[str, str] | None = None
) -> tuple[Any, str]:
    from tests.support.processes import Server, bundleserve, free_port

    port = free_port()
    argv = bundleserve(
        "router",
        "--endpoint-file",
        str(endpoint_file),
        "--model-url",
        model_url,
        "--port",
        str(port),
        "--host",
        "127.0.0.1",
    )
    server = Server(argv, log_path=directory / f"router-{port}.log", env=env)
    url = f"http://127.0.0.1:{port}"
    server.wait_http(f"{url}/healthz")
    return server, url


if __name__ == "__main__":
    web.run_app(
        make_app(), host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None, handler_cancellation=True
    )
