"""`tunesmith ui`: server-rendered pages over the workspace's store, with the CLI's own functions behind
every action (a promotion here passes the same gates as `tunesmith registry promote`).

Pages: overview, datasets, runs (live loss curve and tokens/s), evaluations (metrics with
intervals, per-item diff, review sheets), registry (lineage, alias history, diff, promote and
rollback), deployments (routes, canary, shadow, rollouts, live request stream) and monitoring
(scores and latency over time, drift, alerts, feedback). Charts are drawn by a vendored, pinned
Chart.js; nothing is fetched from another host.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, PackageLoader, select_autoescape

from tunesmith.config import ProjectConfig
from tunesmith.registry.versions import who as local_user
from tunesmith.serve.keys import Caller
from tunesmith.ui.auth import COOKIE, Session, Sessions, same_token
from tunesmith.workspace import Workspace, open_workspace

log = logging.getLogger("tunesmith.ui")

CHART_JS = "vendor/chart-4.5.1.umd.min.js"
SECURITY_HEADERS = {
    # every script and style is served from this app; the chart data sits in JSON blocks
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}
NAV = (
    ("/", "Overview"),
    ("/datasets", "Datasets"),
    ("/runs", "Runs"),
    ("/evaluations", "Evaluations"),
    ("/registry", "Registry"),
    ("/deployments", "Deployments"),
    ("/monitoring", "Monitoring"),
)


@dataclass
class UiState:
    config: ProjectConfig
    config_path: Path
    workspace: Workspace
    sessions: Sessions
    templates: Jinja2Templates

    @property
    def page_size(self) -> int:
        return self.config.ui.page_size


class NeedSignIn(Exception):  # noqa: N818 (control flow, not an error)
    pass


class PageError(Exception):
    """A page that cannot be shown, or an action refused: rendered with its status and message."""

    def __init__(self, status: int, title: str, message: str) -> None:
        super().__init__(message)
        self.status, self.title, self.message = status, title, message


def ui_state(request: Request) -> UiState:
    state: UiState = request.app.state.ui
    return state


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    return header[7:].strip() if header.lower().startswith("bearer ") else None


def viewer(request: Request) -> Caller:
    """The signed-in caller; pages need one when the store has keys."""
    who = ui_state(request).sessions.caller(request.state.session, _bearer(request))
    if who is None:
        raise NeedSignIn()
    return who


def admin(request: Request, who: Caller = Depends(viewer)) -> Caller:
    """An admin caller: every action (train, eval, promote, rollback, approve, abort) needs one."""
    if not who.admin:
        raise PageError(
            403,
            "Admin key needed",
            f"the key {who.name!r} may look but not act: sign in with a key created with "
            "`tunesmith serve keys create NAME --admin`",
        )
    return who


async def checked_form(request: Request) -> dict[str, str]:
    """The posted form, after its CSRF token is checked against the session's (bearer calls need none)."""
    form = {k: str(v) for k, v in (await request.form()).items()}
    if _bearer(request) is None:
        entry: Session | None = request.state.session
        if entry is None or not same_token(form.get("csrf"), entry.csrf):
            raise PageError(
                403, "Form expired", "the form's token does not match your session; reload the page and retry"
            )
    return form


def actor(who: Caller) -> str:
    """Who an action is recorded as in the store's history."""
    return f"ui:{who.name}" if who.key_id else f"ui:{local_user()}"


def render(request: Request, template: str, code: int = 200, **context: Any) -> HTMLResponse:
    state = ui_state(request)
    entry: Session | None = request.state.session
    who = state.sessions.caller(entry, _bearer(request))
    response: HTMLResponse = state.templates.TemplateResponse(
        request,
        template,
        {
            "nav": NAV,
            "who": who,
            "open": state.sessions.ring.open,
            "csrf": entry.csrf if entry else "",
            "project": state.config.project,
            "chart_js": CHART_JS,
            "path": request.url.path,
            **context,
        },
        status_code=code,
    )
    return response


def page_url(request: Request, **changes: Any) -> str:
    """This page's URL with some query parameters changed (pagination, filters)."""
    params = dict(request.query_params)
    for key, value in changes.items():
        if value is None or value == "":
            params.pop(key, None)
        else:
            params[key] = str(value)
    return request.url.path + ("?" + urlencode(params) if params else "")


def page_number(request: Request, name: str = "page") -> int:
    raw = request.query_params.get(name, "1")
    return int(raw) if raw.isdigit() and int(raw) > 0 else 1


def _when(value: datetime | str | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value.replace("T", " ").rstrip("Z")[:19]
    return value.strftime("%Y-%m-%d %H:%M:%S")


def _num(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _templates() -> Jinja2Templates:
    environment = Environment(
        loader=PackageLoader("tunesmith", "ui/templates"), autoescape=select_autoescape(["j2", "html"])
    )
    environment.filters["when"] = _when
    environment.filters["num"] = _num
    environment.filters["q"] = lambda v: quote(str(v), safe="")
    environment.globals["page_url"] = page_url
    return Jinja2Templates(env=environment)


def create_ui_app(config: ProjectConfig, config_path: Path) -> FastAPI:
    """The web app over `config`'s workspace."""
    from tunesmith.ui import actions, pages

    workspace = open_workspace(config)
    app = FastAPI(title="tunesmith ui", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.ui = UiState(
        config=config,
        config_path=config_path.resolve(),
        workspace=workspace,
        sessions=Sessions(workspace, config.ui.session_hours, config.ui.auth),
        templates=_templates(),
    )
    static = resources.files("tunesmith").joinpath("ui", "static")
    app.mount("/static", StaticFiles(directory=str(static)), name="static")

    app.middleware("http")(_sessions)
    app.add_exception_handler(NeedSignIn, _need_sign_in)  # type: ignore[arg-type]
    app.add_exception_handler(PageError, _page_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _internal_error)
    app.include_router(login_router)
    app.include_router(actions.router)  # first: /runs/new before /runs/{run_id}
    app.include_router(pages.router)
    return app


login_router = APIRouter()


async def _sessions(request: Request, call_next: Any) -> Response:
    state = ui_state(request)
    entry = state.sessions.get(request.cookies.get(COOKIE))
    created = None
    if entry is None and not request.url.path.startswith("/static/") and state.sessions.open:
        entry = created = state.sessions.new(None)  # an open app's visitor still gets a CSRF token
    request.state.session = entry
    response: Response = await call_next(request)
    if created is not None:
        response.set_cookie(COOKIE, created.token, httponly=True, samesite="strict")
    response.headers.update(SECURITY_HEADERS)
    return response


async def _need_sign_in(request: Request, _: NeedSignIn) -> Response:
    if request.url.path.endswith(".json") or request.method != "GET":
        return JSONResponse({"error": "sign in with an API key"}, status_code=401)
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/login?{urlencode({'next': target})}", status_code=303)


async def _page_error(request: Request, exc: PageError) -> Response:
    if request.url.path.endswith(".json"):
        return JSONResponse({"error": exc.message}, status_code=exc.status)
    return render(request, "error.html.j2", exc.status, title=exc.title, message=exc.message)


async def _internal_error(request: Request, exc: Exception) -> Response:
    log.exception("error on %s", request.url.path)
    message = f"{exc.__class__.__name__}: {exc}"
    if request.url.path.endswith(".json"):
        return JSONResponse({"error": message}, status_code=500)
    return render(request, "error.html.j2", 500, title="Something broke", message=message)


@login_router.get("/login", response_class=HTMLResponse)
async def login_page(request: Request, next: str = "/") -> Response:
    sessions = ui_state(request).sessions
    if sessions.open:
        return RedirectResponse(_safe_next(next), status_code=303)
    return render(request, "login.html.j2", next=_safe_next(next), error=sessions.no_key_error())


@login_router.post("/login", response_class=HTMLResponse)
async def login(request: Request) -> Response:
    form = {k: str(v) for k, v in (await request.form()).items()}
    state = ui_state(request)
    entry = state.sessions.sign_in(form.get("key", ""))
    target = _safe_next(form.get("next", "/"))
    if entry is None:
        if state.sessions.open:
            return RedirectResponse(target, status_code=303)
        error = state.sessions.no_key_error() or "that is not an active key of this store"
        return render(request, "login.html.j2", 401, next=target, error=error)
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        COOKIE, entry.token, httponly=True, samesite="strict", max_age=int(state.sessions.seconds)
    )
    return response


@login_router.post("/logout")
async def logout(request: Request) -> Response:
    ui_state(request).sessions.end(request.cookies.get(COOKIE))
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE)
    return response


def _safe_next(target: str) -> str:
    """Only a path of this app (no scheme, no other host) is followed after signing in."""
    return target if target.startswith("/") and not target.startswith("//") and "\\" not in target else "/"


def run_ui(
    config: ProjectConfig, config_path: Path, *, host: str | None = None, port: int | None = None
) -> None:
    """`tunesmith ui`: run the app under uvicorn until interrupted."""
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_ui_app(config, config_path)
    bind = host or config.ui.host
    ring = app.state.ui.sessions.ring
    ring.check_exposure(bind, "ui.auth")
    warning = ring.startup_warning()
    if warning:
        log.warning("web app at %s: %s", bind, warning)
    port = config.ui.port if port is None else port  # 0: a free port, which uvicorn prints
    uvicorn.run(app, host=bind, port=port, log_level="info")


@contextmanager
def ui_in_background(config: ProjectConfig, config_path: Path) -> Iterator[str]:
    """The base URL of the app under uvicorn on a free 127.0.0.1 port, until the block ends.

    For tests, benchmarks and notebooks; `tunesmith ui` is the way to run it for real.
    """
    from tunesmith.serve.app import uvicorn_in_background

    with uvicorn_in_background(create_ui_app(config, config_path), name="tunesmith-ui") as url:
        yield url
