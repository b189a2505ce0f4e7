"""The Kubernetes REST API over HTTP (aiohttp.web on loopback) in front of the pure `Store`.

Routes: discovery (`/api`, `/apis`, `/api/v1`, `/apis/{g}`, `/apis/{g}/{v}`, `/version`, `/healthz`), and every
resource path (`/api/v1/namespaces/{ns}/{plural}/{name}/{subresource}` and the `/apis/{group}/{version}/...` forms)
for get/list/watch/create/update/patch/delete/deletecollection. Every request is recorded (verb, resource, status
code) so tests can count writes. Watches stream one JSON event per line until `timeoutSeconds`, the client leaves, or
the server stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from tests.support.k8s import discovery, errors
from tests.support.k8s.errors import ApiError
from tests.support.k8s.resources import ResourceType
from tests.support.k8s.store import APPLY_PATCH, Store

WRITE_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})
DEFAULT_WATCH_TIMEOUT = 1800.0


@dataclass(frozen=True)
class RequestRecord:
    """One API request as the audit log would show it."""

    verb: str  # get, list, watch, create, update, patch, delete, deletecollection
    resource: str  # qualified plural, with "/status" for the subresource: "endpoints.bundleserve.dev/status"
    namespace: str | None
    name: str | None
    code: int
    user_agent: str
    content_type: str
    at: float

    @property
    def is_write(self) -> bool:
        return self.verb in WRITE_VERBS


@dataclass
class InjectedFailure:
    """Answer the next `remaining` matching requests with `code` instead of serving them (a flaky or busy server)."""

    verb: str | None  # None: any verb
    resource: str | None  # qualified, e.g. "deployments.apps" or "endpoints.bundleserve.dev/status"; None: any
    name: str | None
    code: int
    remaining: int

    def matches(self, verb: str, resource: str, name: str | None) -> bool:
        return (
            (self.verb is None or self.verb == verb)
            and (self.resource is None or self.resource == resource)
            and (self.name is None or self.name == name)
        )

    def error(self, resource: ResourceType, name: str) -> ApiError:
        if self.code == 409:
            return errors.conflict(resource.group, resource.plural, name)
        if self.code == 404:
            return errors.not_found(resource.group, resource.plural, name)
        reasons = {429: "TooManyRequests", 500: "InternalError", 503: "ServiceUnavailable", 504: "Timeout"}
        return ApiError(self.code, reasons.get(self.code, "InternalError"), f"injected failure {self.code}")


@dataclass(frozen=True)
class Target:
    resource: ResourceType
    namespace: str | None
    name: str | None
    subresource: str | None


def _json(body: Any, status: int = 200, warnings: list[str] | None = None) -> web.Response:
    response = web.Response(text=json.dumps(body), status=status, content_type="application/json")
    for warning in warnings or []:
        escaped = warning.replace("\\", "\\\\").replace('"', '\\"')
        response.headers.add("Warning", f'299 - "{escaped}"')
    return response


def _error(error: ApiError) -> web.Response:
    return _json(error.status(), status=error.code)


class ApiServer:
    """aiohttp application serving one `Store`; `requests` is the audit log (appended on the server's loop)."""

    def __init__(self, store: Store, *, bookmark_interval: float = 5.0, token: str | None = None) -> None:
        self.store = store
        self.token = token
        self.bookmark_interval = bookmark_interval
        self.server_address = "127.0.0.1:0"
        self._records: list[RequestRecord] = []
        self._records_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed: asyncio.Event | None = None
        self._closing = False
        self._epoch = 0  # bumped by drop_watches(): streams of an older epoch end
        self.active_watches = 0
        self._failures: list[InjectedFailure] = []
        self.internal_errors: list[BaseException] = []  # emulator bugs met while serving (checked by the fixture)

    # --- audit ----------------------------------------------------------------------------------------------------

    def records(self) -> list[RequestRecord]:
        with self._records_lock:
            return list(self._records)

    def reset_records(self) -> None:
        with self._records_lock:
            self._records.clear()

    def writes(self) -> Counter[tuple[str, str]]:
        return Counter((r.verb, r.resource) for r in self.records() if r.is_write)

    def _record(self, request: web.Request, verb: str, target: Target | None, code: int) -> None:
        if target is None:
            return
        resource = target.resource.qualified + (f"/{target.subresource}" if target.subresource else "")
        record = RequestRecord(
            verb=verb,
            resource=resource,
            namespace=target.namespace,
            name=target.name,
            code=code,
            user_agent=request.headers.get("User-Agent", ""),
            content_type=request.headers.get("Content-Type", ""),
            at=time.time(),
        )
        with self._records_lock:
            self._records.append(record)

    # --- failure injection ---------------------------------------------------------------------------------------

    def inject_failure(self, failure: InjectedFailure) -> None:
        with self._records_lock:
            self._failures.append(failure)

    def _injected_failure(self, verb: str, target: Target) -> None:
        resource = target.resource.qualified + (f"/{target.subresource}" if target.subresource else "")
        with self._records_lock:
            for failure in self._failures:
                if failure.remaining > 0 and failure.matches(verb, resource, target.name):
                    failure.remaining -= 1
                    raise failure.error(target.resource, target.name or "")

    # --- lifecycle ------------------------------------------------------------------------------------------------

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Bind to the serving loop: store changes (from any thread) wake the watch streams there."""
        self._loop = loop
        self._changed = asyncio.Event()
        self.store.add_listener(lambda: self._wake_from_any_thread(loop))

    def _wake_from_any_thread(self, loop: asyncio.AbstractEventLoop) -> None:
        if not loop.is_closed():
            loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        if self._changed is not None:
            changed, self._changed = self._changed, asyncio.Event()
            changed.set()

    def drop_watches(self) -> None:
        """End every open watch stream (as an API server restart or a load balancer would); clients reconnect."""
        self._epoch += 1
        self._wake()

    def close_watches(self) -> None:
        self._closing = True
        self._wake()

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    # --- routing --------------------------------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        parts = [p for p in request.path.split("/") if p]
        public = parts in (["healthz"], ["livez"], ["readyz"])
        if self.token and not public and request.headers.get("Authorization") != f"Bearer {self.token}":
            return _error(ApiError(401, "Unauthorized", "Unauthorized"))
        try:
            discovered = self._discovery(parts)
            if discovered is not None:
                if request.method != "GET":
                    raise errors.method_not_allowed()
                return discovered
            target = self._target(parts)
        except ApiError as error:
            return _error(error)
        verb = self._verb(request, target)
        try:
            self._injected_failure(verb, target)
            if verb == "watch":
                self._record(request, verb, target, 200)
                return await self._watch(request, target)
            response = await self._dispatch(request, verb, target)
        except ApiError as error:
            self._record(request, verb, target, error.code)
            return _error(error)
        except Exception as error:  # a bug of the emulator: answer like the real server, and let the fixture fail
            self.internal_errors.append(error)
            self._record(request, verb, target, 500)
            return _error(ApiError(500, "InternalError", f"Internal error occurred: {error!r}"))
        self._record(request, verb, target, response.status)
        return response

    def _discovery(self, parts: list[str]) -> web.Response | None:
        registry = self.store.registry
        if parts in ([], ["healthz"], ["livez"], ["readyz"]):
            return (
                web.Response(text="ok")
                if parts
                else _json({"paths": ["/api", "/api/v1", "/apis", "/version", "/healthz"]})
            )
        if parts == ["version"]:
            return _json(discovery.SERVER_VERSION)
        if parts == ["api"]:
            return _json(discovery.core_versions(self.server_address))
        if parts == ["apis"]:
            return _json(discovery.group_list(registry))
        if len(parts) == 2 and parts[0] == "apis":
            doc = discovery.group(registry, parts[1])
            if doc is None:
                raise errors.path_not_found("/" + "/".join(parts))
            return _json(doc)
        if parts == ["api", "v1"] or (len(parts) == 3 and parts[0] == "apis"):
            group, version = ("", "v1") if parts[0] == "api" else (parts[1], parts[2])
            doc = discovery.resource_list(registry, group, version)
            if doc is None:
                raise errors.path_not_found("/" + "/".join(parts))
            return _json(doc)
        return None

    def _target(self, parts: list[str]) -> Target:
        if len(parts) >= 3 and parts[:2] == ["api", "v1"]:
            group, version, rest = "", "v1", parts[2:]
        elif len(parts) >= 4 and parts[0] == "apis":
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise errors.path_not_found("/" + "/".join(parts))
        namespace = None
        if rest[0] == "namespaces" and len(rest) >= 3 and rest[2] not in ("status", "finalize"):
            namespace, rest = rest[1], rest[2:]
        if len(rest) > 3:
            raise errors.path_not_found("/" + "/".join(parts))
        resource = self.store.registry.get(group, version, rest[0])
        if resource is None or (namespace is not None and not resource.namespaced):
            raise errors.path_not_found("/" + "/".join(parts))
        name = rest[1] if len(rest) > 1 else None
        subresource = rest[2] if len(rest) > 2 else None
        if resource.namespaced and name is not None and namespace is None:
            raise errors.path_not_found("/" + "/".join(parts))
        return Target(resource, namespace, name, subresource)

    @staticmethod
    def _verb(request: web.Request, target: Target) -> str:
        method = request.method
        if method == "GET":
            if target.name is not None:
                return "get"
            return "watch" if request.query.get("watch") in ("true", "1") else "list"
        if method == "DELETE":
            return "delete" if target.name is not None else "deletecollection"
        return {"POST": "create", "PUT": "update", "PATCH": "patch"}.get(method, method.lower())

    async def _body(self, request: web.Request, *, yaml_ok: bool = False) -> Any:
        raw = await request.read()
        if not raw:
            return None
        if yaml_ok:
            return raw.decode()
        try:
            return json.loads(raw)
        except ValueError as error:
            raise errors.bad_request(f"couldn't get version/kind; json parse error: {error}") from None

    async def _dispatch(self, request: web.Request, verb: str, target: Target) -> web.Response:
        store, query = self.store, request.query
        resource, namespace, name = target.resource, target.namespace, target.name
        dry_run = query.get("dryRun") == "All"
        field_validation = query.get("fieldValidation", "Warn")
        if target.subresource not in (None, "status") or (
            target.subresource == "status" and not resource.status_subresource
        ):
            raise errors.path_not_found(request.path)
        if verb == "get":
            assert name is not None
            return _json(store.get(resource, namespace, name))
        if verb == "list":
            limit = int(query["limit"]) if query.get("limit") else None
            return _json(
                store.list_objects(
                    resource,
                    namespace,
                    label_selector=query.get("labelSelector"),
                    field_selector=query.get("fieldSelector"),
                    limit=limit,
                    continue_token=query.get("continue"),
                )
            )
        if verb == "create":
            if resource.namespaced and namespace is None:
                raise errors.method_not_allowed()
            created, warnings = store.create(
                resource, namespace, await self._body(request), dry_run=dry_run, field_validation=field_validation
            )
            return _json(created, 201, warnings)
        if verb == "update":
            assert name is not None
            updated, warnings = store.update(
                resource,
                namespace,
                name,
                await self._body(request),
                subresource=target.subresource,
                dry_run=dry_run,
                field_validation=field_validation,
            )
            return _json(updated, 200, warnings)
        if verb == "patch":
            assert name is not None
            content_type = request.headers.get("Content-Type", "")
            body = await self._body(request, yaml_ok=content_type.startswith(APPLY_PATCH))
            applied_new = content_type.startswith(APPLY_PATCH) and not store.exists(resource, namespace, name)
            patched, warnings = store.patch(
                resource,
                namespace,
                name,
                content_type,
                body,
                subresource=target.subresource,
                dry_run=dry_run,
                field_manager=query.get("fieldManager"),
                field_validation=field_validation,
            )
            return _json(patched, 201 if applied_new else 200, warnings)
        if verb in ("delete", "deletecollection"):
            options = await self._body(request) or {}
            for key in ("propagationPolicy", "gracePeriodSeconds", "orphanDependents"):
                if key in query:
                    options.setdefault(
                        key,
                        query[key]
                        if key == "propagationPolicy"
                        else query[key] == "true"
                        if key == "orphanDependents"
                        else int(query[key]),
                    )
            if dry_run:
                options["dryRun"] = ["All"]
            if verb == "delete":
                assert name is not None
                return _json(store.delete(resource, namespace, name, options))
            return _json(
                store.delete_collection(
                    resource,
                    namespace,
                    label_selector=query.get("labelSelector"),
                    field_selector=query.get("fieldSelector"),
                    options=options,
                )
            )
        raise errors.method_not_allowed()

    # --- watch ----------------------------------------------------------------------------------------------------

    async def _watch(self, request: web.Request, target: Target) -> web.StreamResponse:
        query = request.query
        name_filter = target.name
        try:
            flt = self.store.make_filter(
                target.resource, target.namespace, name_filter, query.get("labelSelector"), query.get("fieldSelector")
            )
            initial = query.get("sendInitialEvents") == "true"
            cursor, events = self.store.watch_start(target.resource, flt, query.get("resourceVersion"), initial=initial)
        except ApiError as error:
            if error.code != 410:
                return _error(error)
            cursor, events = 0, [{"type": "ERROR", "object": error.status()}]
        response = web.StreamResponse(
            status=200, headers={"Content-Type": "application/json", "Cache-Control": "no-cache"}
        )
        response.enable_chunked_encoding()
        await response.prepare(request)
        bookmarks = query.get("allowWatchBookmarks") == "true"
        timeout = float(query["timeoutSeconds"]) if query.get("timeoutSeconds") else DEFAULT_WATCH_TIMEOUT
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        next_bookmark = loop.time() + self.bookmark_interval
        self.active_watches += 1
        epoch = self._epoch
        try:
            await self._send(response, events)
            if any(e["type"] == "ERROR" for e in events):
                return response
            if initial:
                await self._send(response, [self._bookmark(target.resource, cursor, initial_end=True)])
            while not self._closing and epoch == self._epoch:
                changed = self._changed
                assert changed is not None
                try:
                    cursor, events = self.store.events_after(target.resource, flt, cursor)
                except ApiError as error:
                    await self._send(response, [{"type": "ERROR", "object": error.status()}])
                    break
                await self._send(response, events)
                now = loop.time()
                if now >= deadline:
                    break
                if bookmarks and now >= next_bookmark:
                    await self._send(response, [self._bookmark(target.resource, cursor)])
                    next_bookmark = now + self.bookmark_interval
                wait = min(deadline, next_bookmark if bookmarks else deadline) - now
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), timeout=max(wait, 0.0))
        except ConnectionResetError:  # the client went away; a cancellation (server shutdown) propagates
            pass
        finally:
            self.active_watches -= 1
        return response

    @staticmethod
    def _bookmark(resource: ResourceType, cursor: int, *, initial_end: bool = False) -> dict[str, Any]:
        metadata: dict[str, Any] = {"resourceVersion": str(cursor)}
        if initial_end:
            metadata["annotations"] = {"k8s.io/initial-events-end": "true"}
        return {
            "type": "BOOKMARK",
            "object": {"kind": resource.kind, "apiVersion": resource.api_version, "metadata": metadata},
        }

    @staticmethod
    async def _send(response: web.StreamResponse, events: list[dict[str, Any]]) -> None:
        if events:
            await response.write("".join(json.dumps(event) + "\n" for event in events).encode())


class ServerThread:
    """Run an `ApiServer` on a loopback port in a daemon thread with its own event loop."""

    def __init__(self, server: ApiServer, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.server = server
        self.host = host
        self.port = port
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None

    def start(self, timeout: float = 10.0) -> ServerThread:
        self._thread = threading.Thread(target=self._run, name="k8s-api-emulator", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("the Kubernetes API emulator did not start")
        if self._error is not None:
            raise RuntimeError("the Kubernetes API emulator failed to start") from self._error
        return self

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        except BaseException as error:  # reported to start() if it happens before readiness
            self._error = error
            self._ready.set()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        self.server.attach(asyncio.get_running_loop())
        runner = web.AppRunner(self.server.app(), access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        await site.start()
        sockets = getattr(site._server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1]
        self.server.server_address = f"{self.host}:{self.port}"
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            self.server.close_watches()
            await runner.cleanup()

    def call(self, fn: Callable[[], Any], timeout: float = 10.0) -> None:
        """Run `fn` on the server's loop and wait until it ran."""
        assert self._loop is not None
        done = threading.Event()

        def run() -> None:
            try:
                fn()
            finally:
                done.set()

        self._loop.call_soon_threadsafe(run)
        if not done.wait(timeout):
            raise TimeoutError("the Kubernetes API emulator's loop did not run the call")

    def stop(self, timeout: float = 10.0) -> None:
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise TimeoutError("the Kubernetes API emulator did not stop")
