"""Swagger UI at /docs and GraphiQL at /graphql, served with their scripts and styles from this app.

The assets are the published npm builds (package.json) that `make install` copies into .assets/;
nothing is loaded from a CDN, so the explorers work offline and behind proxies that block CDNs.
"""

import functools
import html
import logging
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


def _asset_url(root_path: str, path: str) -> str:
    return f"{root_path}{ASSETS_PATH}/{path}"


def swagger_ui_page(request: Request) -> HTMLResponse:
    root_path = request.scope.get("root_path", "")
    app: FastAPI = request.app
    return get_swagger_ui_html(
        openapi_url=f"{root_path}{app.openapi_url}",
        title=f"{app.title} · Swagger UI",
        swagger_js_url=_asset_url(root_path, "swagger-ui/swagger-ui-bundle.js"),
        swagger_css_url=_asset_url(root_path, "swagger-ui/swagger-ui.css"),
        swagger_favicon_url=_asset_url(root_path, "swagger-ui/favicon-32x32.png"),
        swagger_ui_parameters=SWAGGER_UI_PARAMETERS,
    )


@functools.lru_cache(maxsize=8)
def graphiql_page(root_path: str) -> str:
    """GraphiQL's page for a deployment prefix (one per process in practice, rendered once)."""
    return GRAPHIQL_TEMPLATE.read_text(encoding="utf-8").replace(
        "{{ assets }}", html.escape(f"{root_path}{ASSETS_PATH}", quote=True)
    )


def mount_explorers(app: FastAPI) -> None:
    if not (ASSETS_DIR / "graphiql").is_dir():
        logger.warning("explorer assets missing in %s: run `make install` for /docs and /graphql", ASSETS_DIR)
    app.mount(ASSETS_PATH, StaticFiles(directory=ASSETS_DIR, check_dir=False), name="explorer-assets")
    app.add_api_route("/docs", swagger_ui_page, methods=["GET"], include_in_schema=False)
