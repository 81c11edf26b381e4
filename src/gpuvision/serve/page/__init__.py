"""The web page at `GET /`: choose or drop images, see the top classes, give the true label with one click, and
watch the model's monitoring figures. Three static files, no CDN and no build step; served without the API key
(the page asks for it when the API needs one and keeps it in the tab's sessionStorage only)."""

from __future__ import annotations

from importlib.resources import files

from fastapi import APIRouter
from fastapi.responses import Response

FILES = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
         "style.css": "text/css; charset=utf-8"}
# Only this page's own files run: no inline script, nothing from elsewhere, never inside another site's frame.
HEADERS = {"Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' "
           "blob:; connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'",
           "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache"}


def add_routes(router: APIRouter) -> None:
    """GET / and GET /page/{app.js, style.css}, read once."""
    content = {name: (files(__package__) / name).read_bytes() for name in FILES}

    def route(name: str):
        async def serve_file() -> Response:
            return Response(content[name], media_type=FILES[name], headers=HEADERS)
        return serve_file

    router.add_api_route("/", route("index.html"), methods=["GET"], include_in_schema=False)
    for name in ("app.js", "style.css"):
        router.add_api_route(f"/page/{name}", route(name), methods=["GET"], include_in_schema=False)
