"""`bundleserve invoke` and `bundleserve tasks get`: the SDK from a shell (options are declared in bundleserve.cli).

Output is JSON on stdout, so it pipes into `jq`: a call prints the model's result (a stream one line per chunk, as
the chunks arrive), `invoke --async` without `--wait` prints `{"task_id": ...}`, `tasks get` the task document.
While waiting for a task on a terminal a spinner with the elapsed time runs on stderr; nothing is drawn when stdout
is not a terminal. Exit codes: 0 success, 1 the call failed (the model failed, the task expired, an error answer
or no answer; the reason goes to stderr), 2 bad usage.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from bundleserve.client.errors import BundleserveError
from bundleserve.client.models import EndpointRequest, EndpointResponse, InvalidEndpointRequest
from bundleserve.client.sync import Client, EndpointResponseFuture
from bundleserve.client.wire import DEFAULT_BASE_URL, ModeName

GATEWAY_ENV = "BUNDLESERVE_GATEWAY"
API_KEY_ENV = "BUNDLESERVE_API_KEY"


class UsageError(Exception):
    """Bad flags or input: exit 2."""


@dataclass(frozen=True)
class CliSettings:
    """Where the command sends its call and with which key: read once, by `main`, from the flags and environment."""

    base_url: str = DEFAULT_BASE_URL
    api_key: str | None = field(default=None, repr=False)

    @classmethod
    def from_args(cls, args: argparse.Namespace, env: Mapping[str, str]) -> CliSettings:
        """`--gateway`, else BUNDLESERVE_GATEWAY, else the local default; the key from BUNDLESERVE_API_KEY."""
        return cls(
            base_url=args.gateway or env.get(GATEWAY_ENV) or DEFAULT_BASE_URL,
            api_key=env.get(API_KEY_ENV) or None,
        )

    def client(self) -> Client:
        return Client(self.base_url, api_key=self.api_key)


def build_invocation(args: argparse.Namespace) -> tuple[ModeName, EndpointRequest]:
    """The mode and request the flags describe (pure; UsageError for a bad combination or bad JSON)."""
    if args.wait and not args.use_async:
        raise UsageError("--wait needs --async")
    if args.stream and args.use_async:
        raise UsageError("--stream and --async exclude each other")
    mode: ModeName = "streaming" if args.stream else "async" if args.use_async else "sync"
    if args.url is not None:
        return mode, EndpointRequest(url=args.url)
    try:
        value = json.loads(args.args_json)
    except ValueError as error:
        raise UsageError(f"--args is not valid JSON: {error}") from None
    if value is None:
        raise UsageError("--args must not be null")
    return mode, EndpointRequest(args=value)


def _print(value: Any) -> None:
    print(json.dumps(value), flush=True)


def _fail(message: str) -> int:
    print(f"bundleserve: {message}", file=sys.stderr, flush=True)
    return 1


def _failure_message(response: EndpointResponse) -> str:
    if response.status == "EXPIRED":
        return f"task {response.task_id} expired before a worker ran it"
    detail = f" (model status {response.status_code})" if response.status_code else ""
    return f"the model failed{detail}:\n{(response.traceback or '').rstrip()}"


def _emit_result(response: EndpointResponse) -> int:
    if not response.succeeded:
        return _fail(_failure_message(response))
    _print({"result_url": response.result_url} if response.result_url else response.result_value())
    return 0


@contextlib.contextmanager
def progress(task_id: str) -> Iterator[None]:
    """A spinner with the elapsed time on stderr while waiting, only when stdout is a terminal."""
    if not sys.stdout.isatty():
        yield
        return
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    columns = (SpinnerColumn(), TextColumn("waiting for task {task.description}"), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        bar.add_task(task_id, total=None)
        yield


def _wait(future: EndpointResponseFuture) -> EndpointResponse:
    with progress(str(future.task_id)):
        return future.get()


def invoke(args: argparse.Namespace, settings: CliSettings) -> int:
    mode, request = build_invocation(args)
    with settings.client() as client:
        if mode == "sync":
            return _emit_result(client.endpoint(args.name, mode="sync").predict(request))
        if mode == "streaming":
            with client.endpoint(args.name, mode="streaming").predict(request) as stream:
                for event in stream:
                    if not event.succeeded:
                        return _fail(_failure_message(event))
                    _print(event.result_value())
            return 0
        future = client.endpoint(args.name, mode="async").predict(request)
        if not args.wait:
            _print({"task_id": future.task_id})
            return 0
        return _emit_result(_wait(future))


def tasks_get(args: argparse.Namespace, settings: CliSettings) -> int:
    with settings.client() as client:
        response = _wait(client.task(args.task_id)) if args.wait else client.get_task(args.task_id)
    _print(response.native())
    return 0 if response.status not in ("FAILURE", "EXPIRED") else _fail(_failure_message(response))


def _run(command: Callable[[argparse.Namespace, CliSettings], int], args: argparse.Namespace) -> int:
    """The composition root of both commands: the settings read once from the flags and the environment."""
    try:
        code: int = command(args, CliSettings.from_args(args, os.environ))
    except (UsageError, InvalidEndpointRequest) as error:
        print(f"bundleserve: {error}", file=sys.stderr)
        return 2
    except (BundleserveError, ValueError) as error:
        return _fail(str(error))
    except KeyboardInterrupt:
        return 130
    return code


def main(args: argparse.Namespace) -> int:
    """`bundleserve invoke NAME (--args JSON | --url URL) [--async [--wait]] [--stream] [--gateway URL]`."""
    return _run(invoke, args)


def tasks_main(args: argparse.Namespace) -> int:
    """`bundleserve tasks get ID [--wait] [--gateway URL]`."""
    return _run(tasks_get, args)
