"""Swagger UI (`/docs`) and ReDoc (`/redoc`) served by this app, so they work offline.

FastAPI's own pages load their JavaScript and CSS from a CDN, so on a machine without
internet (a workshop room) they are blank. This is FastAPI's recipe "Custom Docs UI Static
Assets", with the files taken from the pinned `fastapi-offline` package rather than from
copies of a CDN download kept in the repository. Create the app with `docs_url=None,
redoc_url=None`, then call `install(app)`.
"""

from fastapi import FastAPI
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS_URL = "/docs-assets"
ASSETS_PACKAGE = ("fastapi_offline", "static")  # swagger-ui, redoc, favicon.png


def install(app: FastAPI) -> None:
    # A real application served under a path prefix (a proxy's root_path) would prefix
    # these URLs with it, as FastAPI's own pages do.
    if app.docs_url or app.redoc_url:
        raise ValueError("create the app with docs_url=None, redoc_url=None")
    app.mount(ASSETS_URL, StaticFiles(packages=[ASSETS_PACKAGE]), name="docs-assets")
    openapi_url, redirect_url = app.openapi_url or "", app.swagger_ui_oauth2_redirect_url or ""

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=redirect_url,
            swagger_js_url=f"{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS_URL}/favicon.png",
        )

    @app.get(redirect_url, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=openapi_url,
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{ASSETS_URL}/favicon.png",
            with_google_fonts=False,  # fonts from Google would not load offline either
        )
