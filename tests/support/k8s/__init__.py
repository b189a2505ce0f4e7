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
  `auto_roll_out(True)` (every Deployment becomes ready when written), `expire_watch_history()` (410 Gone).
- audit: `requests()` (RequestRecord: verb, resource, namespace, name, code, user_agent), `writes(exclude=("events",))`
  -> Counter[(verb, resource)], `write_count(exclude=...)`, `reset_counts()`.
"""
