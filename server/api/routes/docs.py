"""`/docs`: Swagger UI served from the installed wheel, so the documentation works offline.

FastAPI's own `/docs` page loads Swagger UI's JavaScript and CSS from a public CDN: on an isolated
network the page is blank, and the browser fetches code from a third party. Here the page and its
assets come from this server — Swagger UI from the ``swagger-ui-bundle`` package, the few lines that
start it from this module — so the Content-Security-Policy can say ``script-src 'self'`` (no inline
script). `/openapi.json` stays where FastAPI serves it.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import FileResponse, HTMLResponse, Response
from swagger_ui_bundle import swagger_ui_path

from ..problems import problem_response

router = APIRouter(tags=["operations"], include_in_schema=False)

ASSETS = {  # name → media type: the only files of the bundle this server hands out
    "swagger-ui.css": "text/css",
    "swagger-ui-bundle.js": "text/javascript",
    "favicon-32x32.png": "image/png",
}
INIT_JS = """window.addEventListener("load", function () {
  window.ui = SwaggerUIBundle({url: "/openapi.json", dom_id: "#swagger-ui", deepLinking: true});
});
"""
PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>OTA model update server — API</title>
<link rel="icon" type="image/png" href="/docs/assets/favicon-32x32.png">
<link rel="stylesheet" href="/docs/assets/swagger-ui.css">
</head>
<body>
<div id="swagger-ui"></div>
<script src="/docs/assets/swagger-ui-bundle.js"></script>
<script src="/docs/assets/init.js"></script>
</body>
</html>
"""
CACHE = {"Cache-Control": "public, max-age=86400"}


@router.get("/docs")
async def docs_page() -> HTMLResponse:
    return HTMLResponse(PAGE)


@router.get("/docs/assets/{name}")
async def docs_asset(name: str) -> Response:
    if name == "init.js":
        return Response(INIT_JS, media_type="text/javascript", headers=CACHE)
    media_type = ASSETS.get(name)
    if media_type is None:
        return problem_response(status=404, slug="not-found", title="Not found", detail=f"no docs asset {name!r}")
    return FileResponse(str(swagger_ui_path / name), media_type=media_type, headers=CACHE)
