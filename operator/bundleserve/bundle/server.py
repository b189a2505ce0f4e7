"""The HTTP edge of the bundle runtime (aiohttp) and `main`, run by `bundleserve bundle serve`.

Lifecycle: import the bundle (bad configuration exits 2 with a one-line reason), listen, run load() once in a thread
(the ready route answers 503 meanwhile, and keeps answering 503 with the error if it fails), log one ready line,
serve, and on SIGTERM/SIGINT turn not-ready, finish in-flight requests and exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import inspect
import logging
import os
import signal
import sys
import threading
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

from aiohttp import hdrs, web

from bundleserve import logs
from bundleserve.api.endpoint import Batching
from bundleserve.api.errors import ApiError, PayloadTooLarge
from bundleserve.api.invocation import CUSTOM_ATTRIBUTES_HEADER
from bundleserve.bundle import calling
from bundleserve.bundle.batching import Batcher, BatcherClosed, BatchSettings
from bundleserve.bundle.errors import BundleError, NotReady, StreamNotDefined, load_failed
from bundleserve.bundle.loader import BundleConfigError, BundleSpec, Target, resolve_bundle
from bundleserve.bundle.serialization import (
    EVENT_STREAM_CONTENT_TYPE,
    INPUT_HEADER,
    JSON_CONTENT_TYPE,
    PICKLE_CONTENT_TYPE,
    RETURN_HEADER,
    Inputs,
    decode_inputs,
    encode_json,
    encode_pickle,
    sse_event,
)
from bundleserve.bundle.state import Phase, Readiness

log = logging.getLogger(__name__)

PREDICT_ROUTE = "/predict"
STREAM_ROUTE = "/stream"
READY_ROUTE = "/readyz"
HEALTH_ROUTE = "/healthz"
#: Bodies larger than this are decoded off the event loop.
_DECODE_INLINE_BYTES = 64 * 1024

P = ParamSpec("P")
T = TypeVar("T")


@dataclass(frozen=True)
class Settings:
    """Runtime knobs: the command line, plus environment variables for what the router already bounds; read once by
    `main` (this module is the model server's one reader of its environment)."""

    host: str = "127.0.0.1"
    port: int = 5005
    exit_on_load_failure: bool = False
    worker_threads: int = 16
    max_body_bytes: int = 1024 * 1024 * 1024
    shutdown_timeout_seconds: float = 60.0
    #: `--batch-entrypoint` given: how calls are joined into batches (None: every call is its own).
    batching: BatchSettings | None = None
    #: BUNDLESERVE_LOG_LEVEL: DEBUG, INFO, WARNING, ERROR or CRITICAL.
    log_level: str = "INFO"

    @classmethod
    def from_args(cls, args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> Settings:
        """BundleConfigError naming the flag or variable for a bad value (`environ`: the process's unless a test
        gives its own)."""
        env = os.environ if environ is None else environ
        return cls(
            log_level=_log_level(env),
            host=args.host,
            port=args.port,
            exit_on_load_failure=args.exit_on_load_failure,
            batching=_batch_settings(args),
            worker_threads=_env_number(env, "BUNDLESERVE_WORKER_THREADS", cls.worker_threads, int),
            max_body_bytes=_env_number(env, "BUNDLESERVE_MAX_BODY_BYTES", cls.max_body_bytes, int),
            shutdown_timeout_seconds=_env_number(
                env, "BUNDLESERVE_SHUTDOWN_TIMEOUT_SECONDS", cls.shutdown_timeout_seconds, float
            ),
        )


_BATCHING_DEFAULTS = Batching()


def _batch_settings(args: argparse.Namespace) -> BatchSettings | None:
    """`--max-batch-size` and `--max-batch-wait-ms` (defaults: spec.invocation.batching's) need `--batch-entrypoint`."""
    size = getattr(args, "max_batch_size", None)
    latency_ms = getattr(args, "max_batch_wait_ms", None)
    if getattr(args, "batch_entrypoint", None) is None:
        if size is not None or latency_ms is not None:
            raise BundleConfigError("--max-batch-size and --max-batch-wait-ms need --batch-entrypoint")
        return None
    size = _BATCHING_DEFAULTS.max_batch_size if size is None else size
    latency_ms = _BATCHING_DEFAULTS.max_wait_milliseconds if latency_ms is None else latency_ms
    if size < 1:
        raise BundleConfigError(f"--max-batch-size {size} must be at least 1")
    if latency_ms < 0:
        raise BundleConfigError(f"--max-batch-wait-ms {latency_ms} must not be negative")
    return BatchSettings(max_size=size, max_wait_seconds=latency_ms / 1000)


def _log_level(env: Mapping[str, str]) -> str:
    raw = env.get("BUNDLESERVE_LOG_LEVEL", "").strip() or "INFO"
    if raw.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise BundleConfigError(f"BUNDLESERVE_LOG_LEVEL={raw!r} is not one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
    return raw.upper()


def _env_number(env: Mapping[str, str], name: str, default: T, kind: Callable[[str], T]) -> T:
    text = env.get(name)
    if text is None or text == "":
        return default
    try:
        value = kind(text)
    except ValueError:
        raise BundleConfigError(f"{name}={text!r} is not a number") from None
    if not value > 0:  # type: ignore[operator]
        raise BundleConfigError(f"{name}={text!r} must be positive")
    return value


class CountingExecutor(ThreadPoolExecutor):
    """A thread pool that knows how many calls are still running (to tell a clean exit from abandoned work)."""

    def __init__(self, max_workers: int, thread_name_prefix: str) -> None:
        super().__init__(max_workers=max_workers, thread_name_prefix=thread_name_prefix)
        self._active = 0
        self._lock = threading.Lock()

    @property
    def active(self) -> int:
        return self._active

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        with self._lock:
            self._active += 1
        try:
            future = super().submit(fn, *args, **kwargs)
        except BaseException:
            self._done(None)
            raise
        future.add_done_callback(self._done)
        return future

    def _done(self, _: object) -> None:
        with self._lock:
            self._active -= 1


def error_response(error: ApiError) -> web.Response:
    return web.json_response(error.body(), status=error.status, headers=error.headers)


async def run_in_daemon_thread(function: Callable[[], T]) -> T:
    """Like `to_thread`, but a thread that never returns cannot keep the process alive on shutdown (load())."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(value: Any, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)

    def run() -> None:
        value, error = None, None
        try:
            value = function()
        except BaseException as caught:
            error = caught
        with contextlib.suppress(RuntimeError):  # the loop is already closed: nobody waits any more
            loop.call_soon_threadsafe(settle, value, error)

    threading.Thread(target=run, name="bundle-load", daemon=True).start()
    return await future


class BundleRuntime:
    """The routes and state of one served bundle."""

    def __init__(self, spec: BundleSpec, settings: Settings) -> None:
        self.spec = spec
        self.settings = settings
        self.readiness = Readiness()
        self.executor = CountingExecutor(settings.worker_threads, "bundle-call")
        #: Why the runtime exits non-zero, printed as its last line.
        self.exit_reason: str | None = None
        #: Joins predict calls into batches when the bundle has a batch entrypoint (created on the serving loop).
        self.batcher: Batcher[calling.BatchItem, bytes] | None = None

    def application(self) -> web.Application:
        app = web.Application(client_max_size=self.settings.max_body_bytes, middlewares=[self._errors])
        if self.spec.batch is not None and self.settings.batching is not None:
            app.on_startup.append(self._start_batching)
            # on_cleanup runs after in-flight requests finished (or the shutdown timeout passed): their batches ran.
            app.on_cleanup.append(self._stop_batching)
        app.router.add_post(PREDICT_ROUTE, self.predict)
        app.router.add_post(STREAM_ROUTE, self.stream)
        app.router.add_get(READY_ROUTE, self.ready)
        app.router.add_get(HEALTH_ROUTE, self.health)
        return app

    @web.middleware
    async def _errors(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            return await handler(request)
        except BundleError as error:
            if error.traceback:
                log.warning("%s %s: %s\n%s", request.method, request.path, error.message, error.traceback.rstrip())
            return error_response(error)
        except ApiError as error:
            return error_response(error)
        except web.HTTPException as error:
            if error.status < 400:
                raise
            code = {404: "not_found", 405: "method_not_allowed"}.get(error.status, "invalid_request")
            body = BundleError(f"{request.method} {request.path}: {error.reason}").body()
            body["error"]["code"] = code
            return web.json_response(
                body, status=error.status, headers={k: v for k, v in error.headers.items() if k == hdrs.ALLOW}
            )
        except Exception:
            log.exception("%s %s failed inside the bundle runtime", request.method, request.path)
            return error_response(ApiError("internal error in the bundle runtime (see its log)"))

    async def _start_batching(self, app: web.Application) -> None:
        batch, settings = self.spec.batch, self.settings.batching
        if batch is None or settings is None:
            return
        log.info(
            "batching calls for %s: up to %d per batch, waiting up to %g ms",
            batch.name,
            settings.max_size,
            settings.max_wait_seconds * 1000,
        )
        self.batcher = Batcher(self._run_batch, settings, name=batch.name)

    async def _stop_batching(self, app: web.Application) -> None:
        if self.batcher is not None:
            await self.batcher.close()

    async def _run_batch(self, items: list[calling.BatchItem]) -> list[bytes | BundleError]:
        batch = self.spec.batch
        if batch is None:  # not reachable: the batcher exists only with a batch entrypoint
            raise RuntimeError("no batch entrypoint")
        model = self.readiness.model if self.spec.load is not None else calling.NO_MODEL
        log.debug("running %s on a batch of %d", batch.name, len(items))
        return await calling.call_batch(batch.function, items, model=model, executor=self.executor, name=batch.name)

    async def load(self) -> None:
        target = self.spec.load
        if target is None:
            self.readiness.mark_ready(calling.NO_MODEL)
            return
        log.info("loading the model with %s", target.name)
        try:
            model = await _call_load(target)
        except calling.MODEL_FAILURES as error:  # sys.exit() in load() fails the load, not the runtime
            failure = load_failed(error, where=target.name)
            log.error("load failed: %s\n%s", failure.message, (failure.traceback or "").rstrip())
            self.readiness.mark_failed(failure)
            return
        self.readiness.mark_ready(model)

    async def ready(self, request: web.Request) -> web.Response:
        problem = self.readiness.problem()
        if problem is not None:
            return error_response(problem)
        return web.json_response({"status": "ready"})

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "alive", "phase": str(self.readiness.phase)})

    async def _inputs(self, request: web.Request) -> Inputs:
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise PayloadTooLarge(
                f"the request body exceeds {self.settings.max_body_bytes} bytes (BUNDLESERVE_MAX_BODY_BYTES)"
            ) from None
        raw = request.headers.get(INPUT_HEADER, "").strip().lower() == "raw"
        content_type = request.headers.get(hdrs.CONTENT_TYPE, "")
        if len(body) <= _DECODE_INLINE_BYTES:
            return decode_inputs(body, content_type=content_type, raw=raw)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self.executor, lambda: decode_inputs(body, content_type=content_type, raw=raw)
        )

    async def _bound(
        self, request: web.Request, target: Target
    ) -> tuple[Inputs, tuple[tuple[Any, ...], dict[str, Any]]]:
        """The request's inputs and the (args, kwargs) `target` is called with; a mismatch is `InvalidArguments`."""
        model = self.readiness.model_for_request()
        inputs = await self._inputs(request)
        model_argument = model if self.spec.load is not None else calling.NO_MODEL
        return inputs, calling.bind(target.function, inputs, model=model_argument, name=target.name)

    async def _predict_batched(
        self, request: web.Request, batcher: Batcher[calling.BatchItem, bytes], *, pickled: bool
    ) -> bytes:
        """Check the call against the entrypoint's signature (a bad call is its own 400 and never joins a batch), then
        wait for its share of a batch's answer."""
        inputs, _ = await self._bound(request, self.spec.predict)
        value = dict(inputs.kwargs) if inputs.body is None else inputs.body
        try:
            return await batcher.submit(calling.BatchItem(value, encode_pickle if pickled else encode_json))
        except BatcherClosed as error:
            raise NotReady(str(error)) from None

    async def predict(self, request: web.Request) -> web.Response:
        target = self.spec.predict
        pickled = request.headers.get(RETURN_HEADER, "").strip().lower() == "pickle"
        if self.batcher is not None:
            payload = await self._predict_batched(request, self.batcher, pickled=pickled)
        else:
            _, (args, kwargs) = await self._bound(request, target)
            payload = await calling.call(
                target.function, args, kwargs, executor=self.executor, encode=encode_pickle if pickled else encode_json
            )
        response = web.Response(body=payload, content_type=PICKLE_CONTENT_TYPE if pickled else JSON_CONTENT_TYPE)
        # A Python function cannot set response headers: SageMaker's custom attributes come back as they were sent.
        if (attributes := request.headers.get(CUSTOM_ATTRIBUTES_HEADER)) is not None:
            response.headers[CUSTOM_ATTRIBUTES_HEADER] = attributes
        return response

    async def stream(self, request: web.Request) -> web.StreamResponse:
        target = self.spec.stream
        if target is None:
            raise StreamNotDefined(
                f"{self.spec.predict.name} declares no streaming callable: make it a generator function, define "
                "`stream` in its module, or pass --stream module:function"
            )
        _, (args, kwargs) = await self._bound(request, target)
        chunks = calling.stream(target.function, args, kwargs, executor=self.executor)
        async with contextlib.aclosing(chunks):
            # Errors up to the first chunk are plain HTTP errors; after it, an `error` event ends the stream.
            try:
                first: bytes | None = sse_event(encode_json(await anext(chunks), what="chunk"))
            except StopAsyncIteration:
                first = None
            response = web.StreamResponse(
                headers={
                    hdrs.CONTENT_TYPE: EVENT_STREAM_CONTENT_TYPE,
                    hdrs.CACHE_CONTROL: "no-cache",
                    "X-Accel-Buffering": "no",
                }
            )
            await response.prepare(request)
            try:
                if first is not None:
                    await response.write(first)
                # `write` waits for the socket to drain before the next item is pulled: a slow reader slows the model.
                async for chunk in chunks:
                    await response.write(sse_event(encode_json(chunk, what="chunk")))
            except BundleError as error:
                if error.traceback:
                    log.warning("stream %s failed: %s\n%s", target.name, error.message, error.traceback.rstrip())
                with contextlib.suppress(ConnectionResetError):
                    await response.write(sse_event(encode_json(error.body()), event="error"))
            except ConnectionResetError:
                log.info("stream %s: the client went away; closing the generator", target.name)
                return response
            with contextlib.suppress(ConnectionResetError):
                await response.write_eof()
            return response


async def _call_load(target: Target) -> Any:
    if calling.is_async_callable(target.function):
        model = target.function()
    else:
        model = await run_in_daemon_thread(target.function)
    if inspect.isawaitable(model):
        model = await model
    return model


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def serve(runtime: BundleRuntime) -> int:
    """Listen, load, serve until SIGTERM/SIGINT, drain; the exit code (1: load failed with --exit-on-load-failure)."""
    settings = runtime.settings
    runner = web.AppRunner(
        runtime.application(),
        handle_signals=False,
        access_log=None,
        shutdown_timeout=settings.shutdown_timeout_seconds,
    )
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port)
    try:
        await site.start()
    except OSError as error:
        await runner.cleanup()
        raise BundleConfigError(
            f"cannot listen on {settings.host}:{settings.port}: {error.strerror or error}"
        ) from None
    url = _url(settings.host, runner.addresses[0][1])

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("bundle runtime listening on %s (loading %s)", url, runtime.spec.predict.name)
    loading = asyncio.create_task(runtime.load())
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({loading, stopping}, return_when=asyncio.FIRST_COMPLETED)
    code = 0
    if loading.done():
        failure = runtime.readiness.failure
        if runtime.readiness.phase is Phase.READY:
            log.info("bundle runtime ready on %s", url)
        elif failure is not None and settings.exit_on_load_failure:
            runtime.exit_reason = f"load failed: {failure.message}"
            code = 1
            stop.set()
        await stopping
    else:
        loading.cancel()
    log.info("bundle runtime stopping: finishing in-flight requests (up to %ss)", settings.shutdown_timeout_seconds)
    runtime.readiness.mark_draining()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.remove_signal_handler(sig)
    await runner.cleanup()
    with contextlib.suppress(asyncio.CancelledError):
        await loading
    return code


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency except on Windows
        return asyncio.new_event_loop
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def bundle_paths(given: list[str]) -> list[str]:
    """Where the bundle's modules are imported from: the `--path` directories, else the current directory (as
    uvicorn's and gunicorn's `module:app` do; a console script's sys.path does not contain it otherwise)."""
    return list(given) if given else [os.getcwd()]


def main(args: argparse.Namespace) -> int:
    """The composition root of the model server: its settings read once, then the runtime built from them."""
    try:
        settings = Settings.from_args(args)
    except BundleConfigError as error:
        print(f"bundleserve bundle serve: {error}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level)
    try:
        spec = resolve_bundle(
            args.entrypoint,
            load=args.load,
            stream=getattr(args, "stream", None),
            batch=getattr(args, "batch_entrypoint", None),
            paths=bundle_paths(args.path),
        )
    except BundleConfigError as error:
        print(f"bundleserve bundle serve: {error}", file=sys.stderr)
        return 2
    runtime = BundleRuntime(spec, settings)
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            code = runner.run(serve(runtime))
    except BundleConfigError as error:
        runtime.executor.shutdown(wait=False, cancel_futures=True)
        print(f"bundleserve bundle serve: {error}", file=sys.stderr)
        return 2
    runtime.executor.shutdown(wait=False, cancel_futures=True)
    if runtime.executor.active:
        # Model calls still running after the drain timeout would block the interpreter's exit forever.
        log.warning("exiting with %d model call(s) still running", runtime.executor.active)
        logging.shutdown()
        if runtime.exit_reason:
            print(f"bundleserve bundle serve: {runtime.exit_reason}", file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    if runtime.exit_reason:
        print(f"bundleserve bundle serve: {runtime.exit_reason}", file=sys.stderr, flush=True)
    else:
        log.info("bundle runtime stopped")
    return code
