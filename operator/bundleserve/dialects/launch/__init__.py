"""The Launch dialect: Scale Launch's two HTTP generations over the one invocation core.

- the legacy routes the PyPI `scale-launch` 0.3.x client calls (its base URL ends in `/v1/hosted_inference`);
- the current `/v1` routes of Launch's open-source server (model-engine in the llm-engine repository).

`models` holds the request/response bodies (pydantic at the boundary), `render` the pure rendering and the one
table mapping the `ApiError` hierarchy to Launch's statuses, `routes` the aiohttp adapters (parse -> core -> render).
See docs/dialects.md, "Launch".
"""
