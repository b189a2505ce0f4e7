"""`GET /docs`: an interactive API page (Swagger UI) rendered from the gateway's own `/openapi.json`.

The assets come from the `swagger-ui-bundle-v2` wheel and are served by the gateway itself under `/docs/assets/`, so
the page works without internet access (clusters without egress, local mode offline). Swagger UI 5 is needed for
the OpenAPI 3.1 document the router module generates.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from bundleserve.api.errors import Unavailable

ASSETS_PREFIX = "/docs/assets"

PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>bundleserve gateway API</title>
  <link rel="stylesheet" href="{prefix}/swagger-ui.css">
  <link rel="icon" type="image/png" href="{prefix}/favicon-32x32.png">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="{prefix}/swagger-ui-bundle.js"></script>
  <script>
    window.ui = SwaggerUIBundle({{url: "/openapi.json", dom_id: "#swagger-ui", deepLinking: true}});
  </script>
</body>
</html>
"""


def assets_dir() -> Path | None:
    """The wheel's Swagger UI directory, or None when the wheel is not installed (the page then answers 503)."""
    try:
        import swagger_ui_bundle
    except ImportError:
        return None
    return Path(swagger_ui_bundle.swagger_ui_path)


async def docs_page(request: web.Request) -> web.Response:
    if assets_dir() is None:
        raise Unavailable("the API page needs the swagger-ui-bundle-v2 package; /openapi.json is available")
    return web.Response(text=PAGE.format(prefix=ASSETS_PREFIX), content_type="text/html")


def add_docs_routes(app: web.Application) -> None:
    app.router.add_get("/docs", docs_page)
    found = assets_dir()
    if found is not None:
        app.router.add_static(ASSETS_PREFIX, found, append_version=False, show_index=False)
