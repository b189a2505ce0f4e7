"""The native API as a dialect: `POST /v1/endpoints/{name}/predict|stream|async`, `GET /v1/tasks/{id}`.

Its parsing (`native.calls`: a predict body straight into the one `Invocation`; `native.tasks`: a submission into the task service, the
status document) is shared by the router and the gateway, which mount it over their own backends; neither imports
the other.
"""
