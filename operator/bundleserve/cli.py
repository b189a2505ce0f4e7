"""The single console entry point. Each sub-command's options live here; its work lives in its component.

Components are imported lazily so `bundleserve render` does not pay for aiohttp/redis imports, and a component's
import error does not break the others. Every component exposes `main(args) -> int`.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from pathlib import Path

from bundleserve import __version__

# sub-command -> "module:function" that runs it
COMMANDS = {
    "run": "bundleserve.local.runner:main",
    "operator": "bundleserve.controller.main:main",
    "router": "bundleserve.router.server:main",
    "gateway": "bundleserve.gateway.server:main",
    "bundle serve": "bundleserve.bundle.server:main",
    "render": "bundleserve.controller.render:main",
    "invoke": "bundleserve.client.cli:main",
    "tasks get": "bundleserve.client.cli:tasks_main",
}


def _add_redis(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--redis-url", help="Redis-protocol server for the async queue (default: $BUNDLESERVE_REDIS_URL)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bundleserve", description="Serve model bundles on Kubernetes.")
    parser.add_argument("--version", action="version", version=f"bundleserve {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run Endpoint manifests on this machine (local mode)")
    run.add_argument("files", nargs="+", type=Path, metavar="FILE.yaml")
    run.add_argument("--port", type=int, default=8080)
    run.add_argument("--host", default="127.0.0.1")
    run.add_argument("--data-dir", type=Path, default=Path(".bundleserve"))
    _add_redis(run)

    op = commands.add_parser("operator", help="run the Kubernetes operator (kopf)")
    scope = op.add_mutually_exclusive_group()
    scope.add_argument("--namespace", action="append", dest="namespaces", metavar="NS")
    scope.add_argument("--all-namespaces", action="store_true")
    op.add_argument("--health-port", type=int, default=8081, help="liveness/readiness and /metrics")
    op.add_argument("--peering", default=None, help="kopf peering name for leader election (HA)")
    op.add_argument("--standalone", action="store_true", help="no peering: a single operator replica")

    router = commands.add_parser("router", help="the sidecar in front of one endpoint's model")
    router.add_argument("--endpoint-file", type=Path, required=True)
    router.add_argument("--model-url", required=True)
    router.add_argument("--port", type=int, default=8080)
    router.add_argument("--host", default="0.0.0.0")
    router.add_argument(
        "--variant", default=None, help="the production variant this router serves (default: AllTraffic)"
    )
    _add_redis(router)

    gateway = commands.add_parser("gateway", help="the name-addressed front for many endpoints")
    gateway.add_argument("--port", type=int, default=8080)
    gateway.add_argument("--host", default="0.0.0.0")
    gateway.add_argument(
        "--namespace", action="append", dest="namespaces", metavar="NS", help="watch these namespaces (default: all)"
    )
    _add_redis(gateway)

    bundle = commands.add_parser("bundle", help="the model runtime")
    bundle_commands = bundle.add_subparsers(dest="bundle_command", required=True, metavar="COMMAND")
    serve = bundle_commands.add_parser("serve", help="serve a Python module:function over HTTP")
    serve.add_argument("--entrypoint", required=True, metavar="MODULE:FUNCTION")
    serve.add_argument("--load", default=None, metavar="MODULE:FUNCTION")
    serve.add_argument(
        "--stream", default=None, metavar="MODULE:FUNCTION", help="streaming callable (default: see docs/bundles.md)"
    )
    serve.add_argument("--port", type=int, default=5005)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument(
        "--path",
        action="append",
        default=[],
        help="directory to import the bundle from (repeatable; default: the current directory)",
    )
    serve.add_argument("--exit-on-load-failure", action="store_true", help="exit non-zero when load() fails")
    serve.add_argument(
        "--batch-entrypoint",
        default=None,
        metavar="MODULE:FUNCTION",
        help="join concurrent predict calls into one call of this function (a list of calls in, a list of results out)",
    )
    serve.add_argument("--max-batch-size", type=int, default=None, metavar="N", help="most calls per batch (default 8)")
    serve.add_argument(
        "--max-batch-wait-ms",
        type=int,
        default=None,
        metavar="MS",
        help="longest a call waits for its batch to fill (default 10)",
    )

    render = commands.add_parser("render", help="print the child manifests the operator would create")
    render.add_argument("files", nargs="+", type=Path, metavar="FILE.yaml")
    render.add_argument("--namespace", default="default")

    invoke = commands.add_parser("invoke", help="call an endpoint through the gateway or local mode")
    invoke.add_argument("name")
    given = invoke.add_mutually_exclusive_group(required=True)
    given.add_argument("--args", dest="args_json", metavar="JSON")
    given.add_argument("--url")
    invoke.add_argument("--async", dest="use_async", action="store_true")
    invoke.add_argument("--wait", action="store_true", help="with --async: wait for the result")
    invoke.add_argument("--stream", action="store_true")
    invoke.add_argument("--gateway", help="server URL (default: $BUNDLESERVE_GATEWAY or http://127.0.0.1:8080)")

    tasks = commands.add_parser("tasks", help="show async tasks")
    tasks_commands = tasks.add_subparsers(dest="tasks_command", required=True, metavar="COMMAND")
    task_get = tasks_commands.add_parser("get", help="print a task's status and result as JSON")
    task_get.add_argument("task_id", metavar="ID")
    task_get.add_argument("--wait", action="store_true", help="wait until the task finished")
    task_get.add_argument("--gateway", help="server URL (default: $BUNDLESERVE_GATEWAY or http://127.0.0.1:8080)")
    return parser


def _target(args: argparse.Namespace) -> str:
    if args.command == "bundle":
        return COMMANDS[f"bundle {args.bundle_command}"]
    if args.command == "tasks":
        return COMMANDS[f"tasks {args.tasks_command}"]
    return COMMANDS[args.command]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    module_name, function_name = _target(args).split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name != module_name:
            raise
        print(f"bundleserve: '{args.command}' is not available in this build", file=sys.stderr)
        return 2
    code: int = getattr(module, function_name)(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
