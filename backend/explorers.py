"""Swagger UI at /docs and GraphiQL at /graphql, served with their scripts and styles from this app.

The assets are the published npm builds (package.json) that `make install` copies into .assets/;
nothing is loaded from a CDN, so the explorers work offline and behind proxies that block CDNs, and
each page carries a Content-Security-Policy that allows this origin only, and inline scripts only
by the hash of the scripts the page itself contains.
"""

import base64
import functools
import hashlib
import html
import logging
import re
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

logger = logging.getLogger(__name__)

ASSETS_DIR = Path(__file__).resolve().parent.parent / ".assets"
ASSETS_PATH = "/static"
GRAPHIQL_TEMPLATE = Path(__file__).resolve().parent / "templates" / "graphiql.html"
SWAGGER_UI_PARAMETERS = {
    "persistAuthorization": True,  # the token survives a reload
    "tryItOutEnabled": True,
    "displayRequestDuration": True,
    "validatorUrl": None,  # Swagger UI would otherwise send the spec to an external validator
}
INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)
INLINE_STYLE = re.compile(r"<style>(.*?)</style>", re.DOTALL)


def content_security_policy(page: str, *, runtime_styles: bool = False) -> str:
    """The policy of an explorer page: this origin only, inline scripts (and styles) by their hashes.

    `runtime_styles`: the page's scripts insert <style> elements whose text varies (GraphiQL's dialogs
    lock scrolling with a <style> holding the scrollbar's width), which no hash can name, so inline
    styles need 'unsafe-inline' there. CSS cannot run code; scripts stay allowed by hash only.
    """
    script_sources = " ".join(("'self'", *map(_sha256_source, INLINE_SCRIPT.findall(page))))
    style_sources = (
        "'self' 'unsafe-inline'"
        if runtime_styles
        else " ".join(("'self'", *map(_sha256_source, INLINE_STYLE.findall(page))))
    )
    return "; ".join(
        (
            "default-src 'none'",
            f"script-src {script_sources}",
            f"style-src {style_sources}",
            "img-src 'self' data:",  # the stylesheets' icons are data: URIs
            "font-src 'self' data:",
            "connect-src 'self'",  # the schema, the API, GraphQL: all on this origin
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        )
    )


def _sha256_source(script: str) -> str:
    digest = hashlib.sha256(script.encode("utf-8")).digest()
    return f"'sha256-{base64.b64encode(digest).decode('ascii')}'"


def _page_response(page: str, *, runtime_styles: bool = False) -> HTMLResponse:
    policy = content_security_policy(page, runtime_styles=runtime_styles)
    return HTMLResponse(page, headers={"Content-Security-Policy": policy})


def _asset_url(root_path: str, path: str) -> str:
    return f"{root_path}{ASSETS_PATH}/{path}"


def swagger_ui_page(request: Request) -> HTMLResponse:
    root_path = request.scope.get("root_path", "")
    app: FastAPI = request.app
    page = get_swagger_ui_html(
        openapi_url=f"{root_path}{app.openapi_url}",
        title=f"{app.title} · Swagger UI",
        swagger_js_url=_asset_url(root_path, "swagger-ui/swagger-ui-bundle.js"),
        swagger_css_url=_asset_url(root_path, "swagger-ui/swagger-ui.css"),
        swagger_favicon_url=_asset_url(root_path, "swagger-ui/favicon-32x32.png"),
        swagger_ui_parameters=SWAGGER_UI_PARAMETERS,
    )
    return _page_response(bytes(page.body).decode("utf-8"))


@functools.lru_cache(maxsize=8)
def graphiql_page(root_path: str) -> str:
    """GraphiQL's page for a deployment prefix (one per process in practice, rendered once)."""
    return GRAPHIQL_TEMPLATE.read_text(encoding="utf-8").replace(
        "{{ assets }}", html.escape(f"{root_path}{ASSETS_PATH}", quote=True)
    )


def graphiql_response(request: Request) -> HTMLResponse:
    return _page_response(graphiql_page(request.scope.get("root_path", "")), runtime_styles=True)


def mount_explorers(app: FastAPI, *, swagger_ui: bool, graphiql: bool) -> None:
    """Swagger UI at /docs when `swagger_ui`; the assets of whichever explorer is on (GraphiQL's page
    itself is Strawberry's GET /graphql)."""
    if not (swagger_ui or graphiql):
        return
    if not (ASSETS_DIR / "graphiql").is_dir():
        logger.warning("explorer assets missing in %s: run `make install` for /docs and /graphql", ASSETS_DIR)
    app.mount(ASSETS_PATH, StaticFiles(directory=ASSETS_DIR, check_dir=False), name="explorer-assets")
    if swagger_ui:
        app.add_api_route("/docs", swagger_ui_page, methods=["GET"], include_in_schema=False)
