"""The api-server's read-only view of the files the extra links name (a run's gate report, a dataset's
manifest), for a file:// data root: the UI drops file:// links, and a browser would not open them.

Mounted by the `llmops` plugin at include.links.FILES_PREFIX. A request is served only when
- the caller is signed in to Airflow (the UI's session cookie or a bearer token) and may read one of
  the DAGs whose runs link that file (include.links.LINKED_FILES);
- the path is one a link names (`curated/<version>/manifest.json`, `evaluations/<run>/gate/report.html`),
  canonical, without '..', and resolves (symlinks included) to a file inside the configured data root.
Anything else is 404, the same answer as a missing file. GET only; responses carry a CSP sandbox
(the report is self-contained: inline styles and data: images, no scripts) and `nosniff`.

Workers and the dag-processor import the plugin too: the FastAPI app and Airflow's API security
are imported on the first request, in the api-server, not at import.
"""

# No `from __future__ import annotations`: FastAPI reads the dependencies' annotations at definition.
from typing import Annotated, Any

from include.links import FILES_PREFIX, FILES_ROUTE

__all__ = ["FILES_PREFIX", "app", "build_app"]

HEADERS = {
    "Content-Security-Policy": "default-src 'none'; img-src data:; style-src 'unsafe-inline'; sandbox",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}
MEDIA_TYPES = {".html": "text/html; charset=utf-8", ".json": "application/json"}


def build_app(data_root=None, authorize=None):
    """The FastAPI app. `data_root` (a callable returning the file:// root) and `authorize` (a FastAPI
    dependency returning `may_read(dag_ids) -> bool`) default to the settings and Airflow's auth manager."""
    from pathlib import Path
    from urllib.parse import unquote

    from fastapi import Depends, FastAPI, HTTPException
    from fastapi.responses import FileResponse

    from include.links import served_file

    app = FastAPI(title="llmops run files", docs_url=None, redoc_url=None, openapi_url=None)
    data_root = data_root or _settings_data_root
    authorize = authorize or _airflow_authorization()

    @app.get(FILES_ROUTE + "/{relative:path}")
    def run_file(relative: str, may_read: Annotated[Any, Depends(authorize)]) -> FileResponse:
        root = data_root()
        found = None
        if root.startswith("file://"):
            found = served_file(Path(unquote(root.removeprefix("file://"))), relative)
        if found is None:
            raise HTTPException(404, "no such report or manifest under the data root")
        path, dags = found
        if not may_read(dags):
            raise HTTPException(403, f"needs read access to one of the DAGs {', '.join(dags)}")
        return FileResponse(path, media_type=MEDIA_TYPES.get(path.suffix, "text/plain; charset=utf-8"),
                            headers=HEADERS)

    return app


def _settings_data_root() -> str:
    from include.settings import get_settings

    return get_settings().data_root


def _airflow_authorization():
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import DagDetails
    from airflow.api_fastapi.core_api.security import get_user
    from fastapi import Depends

    def authorize(user: Annotated[Any, Depends(get_user)]):  # the session cookie or a bearer token; else 401
        def may_read(dags) -> bool:
            manager = get_auth_manager()
            return any(manager.is_authorized_dag(method="GET", details=DagDetails(id=d), user=user) for d in dags)

        return may_read

    return authorize


class _LazyApp:
    """An ASGI app that builds the FastAPI app on its first request."""

    def __init__(self) -> None:
        self._app: Any = None

    async def __call__(self, scope, receive, send) -> None:
        if self._app is None:
            self._app = build_app()
        await self._app(scope, receive, send)


app = _LazyApp()
