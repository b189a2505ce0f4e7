"""An in-process Kubernetes API server emulator for the operator's integration tests (see tests/README.md).

Fixture `k8s_api` (tests/support/k8s/fixtures.py, re-exported by tests/integration/conftest.py) yields a running
`KubernetesEmulator`:

- `.url` (http://127.0.0.1:PORT), `.kubeconfig` (Path; kopf logs in with KUBECONFIG exactly as in a cluster),
  `.env` ({"KUBECONFIG": ...} for subprocesses), `.headers` (bearer token for raw HTTP clients: required).
- objects, bypassing HTTP and the write counters: `get(resource, name, namespace)` -> dict | None,
  `items(resource, namespace, label_selector=)`, `create(body)`, `apply(docs | path)`, `install_crd(crd | path)`,
  `patch(resource, name, merge_patch, namespace, subresource=)`, `delete(resource, name, namespace, propagation=)`,
  `create_namespace(name)`. Resource names: "deployments.apps", "services", "endpoints.bundleserve.dev", ...
- other controllers: `roll_out(ns, name, ready=None, waiting_reason=None, container=None, message="")` (Deployment ->
  ReplicaSet -> Pods with statuses, then the Deployment status), `set_deployment_status(ns, name, **status_fields)`,
  `auto_roll_out(True)` (every Deployment becomes ready when written), `expire_watch_history()` (every version handed
  out so far becomes too old: resuming watches get 410 Gone) and `drop_watches()` (close open watch streams now),
  `fail_requests(code, verb=, resource=, name=, times=1)` (the next matching requests get that error),
  `active_watches` (open watch streams).
- audit: `requests()` (RequestRecord: verb, resource, namespace, name, code, user_agent), `writes(exclude=("events",))`
  -> Counter[(verb, resource)] (failed attempts included unless `succeeded_only=True`), `write_count(...)`,
  `reset_counts()`; `problems()` lists failures of the emulator itself (the fixture fails the test on any).
"""
