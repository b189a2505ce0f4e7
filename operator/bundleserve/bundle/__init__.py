"""The bundle runtime: serves a Python `module:callable` bundle over HTTP inside the model container.

Modules: `loader` (resolve names once), `calling` (bind and run the user's callables), `serialization` (bodies in and
out, server-sent events), `state` (readiness), `errors` (the runtime's error bodies), `server` (the aiohttp edge and
`main`). The HTTP contract with the router is in docs/contracts.md; the user-facing guide in docs/bundles.md.
"""
