"""The mailpush web service: upload captures, get the per-client verdicts, timing plots and evidence.

``create_app(db_url, data_dir, max_upload_mb, workers)`` builds the FastAPI application; ``mailpush serve`` runs
it with uvicorn. Every route except ``/healthz`` (and the static CSS/JS) needs a user: an API token in
``Authorization: Bearer …`` or the HttpOnly session cookie set by the login form. A user only ever sees their
own captures: anyone else's id answers 404, exactly like an id that does not exist.
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
from pathlib import Path

from fastapi import Depends, FastAPI, Form, HTTPException, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from sqlalchemy import func, select
from contextlib import asynccontextmanager

from analyzer import __version__
from analyzer.verdict.model import CAUSES, VERDICTS, CaptureResult
from analyzer.verdict.causes import MEANINGS
from analyzer.web import auth, logs
from analyzer.web import incidents as incident_jobs  # before Database(): its table joins the schema
from analyzer.web.db import DONE, FAILED, QUEUED, RUNNING, Capture, Database, User, default_db_url, iso, utcnow
from analyzer.web.metrics import ServiceMetrics
from analyzer.web.storage import CAPTURE_ID_RE, DiskFull, Store, UploadError, UploadTooLarge, receive_upload
from analyzer.web.worker import DEFAULT_JOB_TIMEOUT_S, WorkerPool, draw_plots

log = logging.getLogger("mailpush.web")

HERE = Path(__file__).resolve().parent
# Content-Security-Policy of our own pages: scripts and styles only from /static (no inline code), so text taken
# from a capture (mailbox DNs, file names) can never run as script even if escaping were missed somewhere.
PAGE_CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
            "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
# The downloadable report is self-contained (inline styles, embedded images) and needs no script at all.
REPORT_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; frame-ancestors 'none'"
# The Swagger UI page: its JS/CSS are served from /docs-assets (the pinned swagger-ui-bundle package, so /docs
# works offline and nothing is loaded from a CDN); FastAPI's page starts it with one inline script.
DOCS_CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
            "img-src 'self' data:")
CAPTURES_PER_PAGE = 100
CSRF_HEADER_HELP = ("requests that log in, log out or change data with a session cookie need the header "
                    "X-Requested-With: XMLHttpRequest (or use a Bearer token)")


# One line per cause, shown as a tooltip on the report page (the verdict stage's reason says what was seen).
# One line per cause, shared with the docs (docs/verdicts.md) and the reports (a single wording, kept in the verdict stage).
CAUSE_HELP = MEANINGS


class LoginRequired(Exception):
    """Raised by page dependencies: answered with a redirect to the login form."""


def create_app(
    db_url: str | None = None,
    data_dir: str | Path = "mailpush-data",
    max_upload_mb: float = 200,
    workers: int = 2,
    job_timeout_s: float = DEFAULT_JOB_TIMEOUT_S,
    plots_in_job: bool = True,
    max_capture_gb: float | None = None,
    max_compression_ratio: float | None = None,
) -> FastAPI:
    """``plots_in_job=False`` draws the timing plots when a report is first viewed instead of at the end of every
    analysis (matplotlib takes ~1 s per client, often more than the analysis itself: worth it for bulk uploads
    that are mostly read through the API)."""
    store = Store(data_dir)
    db = Database(db_url or default_db_url(store.root))
    pool = WorkerPool(db, store, workers, job_timeout_s, plots_in_job,
                      limits=_job_limits(store, max_capture_gb, max_compression_ratio))
    metrics = pool.metrics = ServiceMetrics(db)
    incident_worker = incident_jobs.IncidentWorker(db, store, job_timeout_s, limits=pool.limits)
    max_bytes = int(max_upload_mb * 1024 * 1024)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        pool.start()
        if workers:
            incident_worker.start()
        try:
            yield
        finally:
            incident_worker.stop()
            pool.stop()
            db.dispose()

    app = FastAPI(
        title="mailpush",
        version=__version__,
        description="Upload captures of Outlook/Exchange EMSMDB traffic and get, per Outlook client, whether "
        "Exchange new-mail push notification (EcRRegisterPushNotification + UDP) works, and if not why.",
        lifespan=lifespan,
        docs_url=None,  # served below, behind the login
        redoc_url=None,
        openapi_url=None,
    )
    app.state.db, app.state.store, app.state.pool, app.state.max_bytes = db, store, pool, max_bytes
    app.state.metrics = metrics
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.globals["version"] = __version__
    templates.env.filters["clock"] = _clock
    templates.env.filters["percent"] = lambda x: f"{float(x) * 100:.0f}%"
    templates.env.filters["seconds"] = lambda x: "—" if x is None else f"{float(x):.1f} s"
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    swagger_assets = _swagger_ui_dir()
    if swagger_assets is not None:
        app.mount("/docs-assets", StaticFiles(directory=swagger_assets), name="docs-assets")
    bearer = HTTPBearer(auto_error=False, description="API token printed by `mailpush user add NAME`")

    # --- security headers ---------------------------------------------------------------------------------

    @app.middleware("http")
    async def security_headers(request: Request, call_next):
        response = await call_next(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Content-Security-Policy", PAGE_CSP)
        if request.url.path.startswith("/api/") or request.url.path in ("/", "/login") \
                or request.url.path.startswith("/captures/"):
            response.headers.setdefault("Cache-Control", "no-store")  # private data
        return response

    logs.install_request_log(app)  # outermost: sees the final status of every request

    @app.exception_handler(LoginRequired)
    async def to_login(request: Request, exc: LoginRequired):
        return RedirectResponse(f"/login?next={request.url.path}", status_code=303)

    # --- who is asking ------------------------------------------------------------------------------------

    def authenticate(request: Request, credentials: HTTPAuthorizationCredentials | None) -> User | None:
        if credentials is not None:
            user = auth.user_for_token(db, credentials.credentials)
            request.state.user_name = user.name if user else None  # for the request log line
            return user
        user = auth.user_for_session(db, request.cookies.get(auth.SESSION_COOKIE))
        request.state.user_name = user.name if user else None
        if user is not None and request.method not in ("GET", "HEAD", "OPTIONS"):
            require_csrf_proof(request)
        return user

    def require_csrf_proof(request: Request) -> None:
        # Cookie-authenticated changes, login and logout must come from our own scripts (a custom header cannot be
        # sent by a cross-site form), on top of the SameSite=Lax cookie: a second line against CSRF.
        if request.headers.get("x-requested-with") != "XMLHttpRequest":
            raise HTTPException(403, CSRF_HEADER_HELP)

    def api_user(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> User:
        user = authenticate(request, credentials)
        if user is None:
            raise HTTPException(401, "a valid API token (Authorization: Bearer …) or a login session is needed",
                                headers={"WWW-Authenticate": "Bearer"})
        return user

    def page_user(request: Request) -> User:
        user = auth.user_for_session(db, request.cookies.get(auth.SESSION_COOKIE))
        if user is None:
            raise LoginRequired()
        request.state.user_name = user.name
        return user

    def ensure_plots(row: Capture) -> None:
        """Plots are re-drawn from the stored result when missing (e.g. analysed while the report stage was
        not installed, or the plot directory was cleaned): the result JSON is the source of truth."""
        result = row.result
        if row.status == DONE and result and result.get("clients") and not store.plot_dir(row.id).is_dir():
            problem = draw_plots(store, row.id, CaptureResult.from_dict(result), only_if_missing=True)
            if problem:
                log.warning("capture %s: %s", row.id, problem)

    def own_capture(capture_id: str, user: User) -> Capture:
        if not CAPTURE_ID_RE.match(capture_id):
            raise HTTPException(404, "no such capture")
        with db.session() as s:
            row = s.get(Capture, capture_id)
        if row is None or row.user_id != user.id:
            raise HTTPException(404, "no such capture")  # same answer for "not yours" and "does not exist"
        return row

    # merged captures of one incident (client side + server side): /api/incidents
    incident_jobs.register_routes(app, db, incident_worker, api_user, own_capture, REPORT_CSP)

    # --- health, docs -------------------------------------------------------------------------------------

    @app.get("/healthz", tags=["service"], summary="Liveness and readiness (no authentication)")
    def healthz():
        try:
            with db.session() as s:
                queued = s.scalar(select(func.count()).select_from(Capture).where(Capture.status == QUEUED))
        except Exception as exc:
            return JSONResponse({"status": "error", "detail": f"database unavailable: {type(exc).__name__}"}, 503)
        return {"status": "ok", "version": __version__, "workers": pool.workers, "queued": queued}

    @app.get("/metrics", tags=["service"], summary="Prometheus metrics (no authentication, like /healthz)",
             response_class=Response)
    def prometheus_metrics():
        return Response(metrics.render(), media_type=metrics.content_type)

    @app.get("/openapi.json", include_in_schema=False)
    def openapi_json(user: User = Depends(api_user)):
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False)
    def docs(user: User = Depends(page_user)):
        if swagger_assets is None:
            raise HTTPException(503, "API docs need the swagger-ui-bundle package (pip install swagger-ui-bundle)")
        page = get_swagger_ui_html(openapi_url="/openapi.json", title="mailpush API",
                                   swagger_js_url="/docs-assets/swagger-ui-bundle.js",
                                   swagger_css_url="/docs-assets/swagger-ui.css",
                                   swagger_favicon_url="/static/favicon.svg")
        page.headers["Content-Security-Policy"] = DOCS_CSP
        return page

    # --- API ----------------------------------------------------------------------------------------------

    @app.post(
        "/api/captures", status_code=202, tags=["captures"], summary="Upload a capture for analysis",
        response_description="The capture was stored and queued for analysis",
        responses={400: {"description": "not a multipart upload with a field 'file'"},
                   401: {"description": "no valid token or session"},
                   413: {"description": "larger than the server's --max-upload-mb"},
                   507: {"description": "not enough free disk space"}},
        # The body is parsed by hand (streamed to disk, size checked per chunk), so describe it for OpenAPI.
        openapi_extra={"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
            "type": "object", "required": ["file"],
            "properties": {"file": {"type": "string", "format": "binary",
                                    "description": "pcap, pcapng or NetMon capture, optionally gzip-compressed"},
                           "secrets": {"type": "string", "format": "binary",
                                       "description": "optional secrets file (DOMAIN\\user:password, "
                                       "user:password or user::NTHASH lines) to decrypt NTLMSSP-sealed sessions; "
                                       "held in memory until the analysis starts, never stored nor shown"}},
        }}}}},
    )
    async def upload_capture(request: Request, user: User = Depends(api_user)):
        try:
            with store.reserve(max_bytes):  # room for this upload at its largest, beside those in progress
                return await _store_upload(request, user)
        except DiskFull:
            metrics.uploads_rejected.labels("disk_full").inc()
            return JSONResponse({"detail": DISK_FULL}, 507, headers={"Connection": "close"})

    async def _store_upload(request: Request, user: User):
        capture_id = secrets.token_hex(8)
        partial = store.partial_path(capture_id)
        try:
            received = await receive_upload(request, partial, max_bytes)
        except UploadTooLarge:
            metrics.uploads_rejected.labels("too_large").inc()
            # Connection: close, because the rest of the body was not read.
            return JSONResponse({"detail": f"upload larger than the limit of {max_upload_mb:g} MB"}, 413,
                                headers={"Connection": "close"})
        except UploadError as exc:
            metrics.uploads_rejected.labels("bad_request").inc()
            return JSONResponse({"detail": str(exc)}, 400, headers={"Connection": "close"})
        account_secrets = None
        if received.secrets:
            from analyzer.dissect.secrets import Secrets, SecretsError

            try:
                account_secrets = Secrets.parse(received.secrets.decode("utf-8-sig"), source="secrets file")
            except (SecretsError, UnicodeDecodeError) as exc:  # the message names a line, never its text
                partial.unlink(missing_ok=True)
                detail = str(exc) if isinstance(exc, SecretsError) else "the secrets file is not UTF-8 text"
                return JSONResponse({"detail": detail}, 400)
        partial.rename(store.capture_path(capture_id))
        try:
            with db.session.begin() as s:
                s.add(Capture(id=capture_id, user_id=user.id, filename=received.filename, size=received.size,
                              sha256=received.sha256, uploaded_at=utcnow(), status=QUEUED))
        except Exception as exc:
            store.remove(capture_id)
            if _is_disk_full(exc):
                raise DiskFull() from None
            raise
        if account_secrets:
            pool.hold_secrets(capture_id, account_secrets)
        metrics.upload_bytes.observe(received.size)
        logs.job_state(capture_id, QUEUED, user=user.name, size=received.size)
        pool.notify()
        return JSONResponse(
            {"id": capture_id, "status": QUEUED, "filename": received.filename, "size": received.size,
             "sha256": received.sha256, "url": f"/api/captures/{capture_id}", "page": f"/captures/{capture_id}"},
            status_code=202, headers={"Location": f"/api/captures/{capture_id}"},
        )

    @app.get("/api/captures", tags=["captures"], summary="Your captures, newest first, with verdict counts")
    def list_captures(user: User = Depends(api_user), limit: int = 500, offset: int = 0):
        limit, offset = max(1, min(limit, 5000)), max(0, offset)
        return {"captures": [_summary(c, store, pool) for c in _own_captures(db, user, limit, offset)],
                "limit": limit, "offset": offset}

    @app.get("/api/captures/{capture_id}", tags=["captures"], summary="One capture: status and result")
    def get_capture(capture_id: str, user: User = Depends(api_user)):
        return _detail(own_capture(capture_id, user), store, pool)

    @app.get("/api/captures/{capture_id}/report.html", tags=["captures"], response_class=HTMLResponse,
             summary="Self-contained HTML report (plots embedded)")
    def capture_report(capture_id: str, user: User = Depends(api_user)):
        row = own_capture(capture_id, user)
        result = _result_or_409(row)
        try:
            from analyzer.report import render_html
        except ImportError:
            render_html = None
        if render_html is not None:
            html = render_html([result])
        else:  # report stage not installed: our own page template, standalone
            html = templates.get_template("report_standalone.html").render(
                capture=_detail(row, store, pool), result=row.result, verdicts=VERDICTS)
        return HTMLResponse(html, headers={"Content-Security-Policy": REPORT_CSP})

    @app.get("/api/captures/{capture_id}/results.csv", tags=["captures"],
             summary="One row per client (the `mailpush analyze --format csv` columns)")
    def capture_csv(capture_id: str, user: User = Depends(api_user)):
        row = own_capture(capture_id, user)
        result = _result_or_409(row)
        try:
            from analyzer.report import render_csv

            text = render_csv([result])
        except ImportError:
            from analyzer.pipeline import results_dataframe
            from analyzer.report.safe_text import neutralise_frame

            text = neutralise_frame(results_dataframe([result])).to_csv(index=False)
        return Response(text, media_type="text/csv; charset=utf-8",
                        headers={"Content-Disposition": f'attachment; filename="mailpush-{row.id}.csv"'})

    @app.get("/api/captures/{capture_id}/plots/{name}.png", tags=["captures"], response_class=FileResponse,
             summary="A timing plot (names listed in the capture's `plots`)")
    def capture_plot_png(capture_id: str, name: str, user: User = Depends(api_user)):
        return _plot(capture_id, name, "png", user)

    @app.get("/api/captures/{capture_id}/plots/{name}.svg", tags=["captures"], response_class=FileResponse,
             summary="The same timing plot as SVG")
    def capture_plot_svg(capture_id: str, name: str, user: User = Depends(api_user)):
        return _plot(capture_id, name, "svg", user)

    def _plot(capture_id: str, name: str, ext: str, user: User):
        ensure_plots(own_capture(capture_id, user))
        path = store.plot_file(capture_id, name, ext)
        if path is None:
            raise HTTPException(404, "no such plot")
        return FileResponse(path, media_type="image/png" if ext == "png" else "image/svg+xml")

    @app.delete("/api/captures/{capture_id}", status_code=204, tags=["captures"],
                summary="Delete a capture, its results and its plots")
    def delete_capture(capture_id: str, user: User = Depends(api_user)):
        own_capture(capture_id, user)
        pool.cancel(capture_id)  # a running analysis is killed (its whole process group) before the files go
        with db.session.begin() as s:
            row = s.get(Capture, capture_id)
            if row is not None:
                s.delete(row)
        pool.drop_secrets(capture_id)
        logs.job_state(capture_id, "deleted", user=user.name)
        store.remove(capture_id)  # a worker still analysing it cleans up again when it finishes
        return Response(status_code=204)

    # --- pages --------------------------------------------------------------------------------------------

    @app.get("/login", response_class=HTMLResponse, include_in_schema=False)
    def login_form(request: Request, next: str = "/"):
        return templates.TemplateResponse(request, "login.html", {"next": _safe_next(next), "error": None})

    @app.post("/login", include_in_schema=False)
    def login(request: Request, token: str = Form(""), next: str = Form("/")):
        require_csrf_proof(request)  # login CSRF: a cross-site form must not log a victim into our account
        user = auth.user_for_token(db, token.strip())
        if user is None:
            return templates.TemplateResponse(
                request, "login.html", {"next": _safe_next(next), "error": "That token is not valid."},
                status_code=401)
        try:
            session_id = auth.create_session(db, user.id)
        except Exception as exc:  # the session row cannot be written
            log.error("login of %s: cannot store the session: %s", user.name, exc)
            if _is_disk_full(exc):
                return JSONResponse({"detail": DISK_FULL}, 507)
            return JSONResponse({"detail": "the database is unavailable; try again later"}, 503)
        response = RedirectResponse(_safe_next(next), status_code=303)
        response.set_cookie(auth.SESSION_COOKIE, session_id, httponly=True, samesite="lax",
                            secure=request.url.scheme == "https",
                            max_age=int(auth.SESSION_LIFETIME.total_seconds()), path="/")
        return response

    @app.post("/logout", include_in_schema=False)
    def logout(request: Request):
        require_csrf_proof(request)
        auth.end_session(db, request.cookies.get(auth.SESSION_COOKIE))
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(auth.SESSION_COOKIE, path="/")
        return response

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index(request: Request, user: User = Depends(page_user), page: int = 1):
        with db.session() as s:
            total = s.scalar(select(func.count()).select_from(Capture).where(Capture.user_id == user.id)) or 0
        pages = max(1, -(-total // CAPTURES_PER_PAGE))
        page = min(max(1, page), pages)
        captures = [_summary(c, store, pool) for c in
                    _own_captures(db, user, CAPTURES_PER_PAGE, (page - 1) * CAPTURES_PER_PAGE)]
        return templates.TemplateResponse(request, "index.html", {
            "user": user, "captures": captures, "max_upload_mb": max_upload_mb, "verdicts": VERDICTS,
            "page": page, "pages": pages, "total": total, "per_page": CAPTURES_PER_PAGE})

    @app.get("/captures/{capture_id}", response_class=HTMLResponse, include_in_schema=False)
    def capture_page(request: Request, capture_id: str, user: User = Depends(page_user)):
        try:
            row = own_capture(capture_id, user)
        except HTTPException:
            return templates.TemplateResponse(request, "not_found.html", {"user": user}, status_code=404)
        ensure_plots(row)
        detail = _detail(row, store, pool)
        clients = []
        for client in (row.result or {}).get("clients", []):
            slug = _client_slug(client["client"])
            clients.append({**client, "slug": slug,
                            # timeline first: it is the one that shows the one-minute polling at a glance
                            "plots": sorted((p for p in detail["plots"] if p.endswith("-" + slug)),
                                            key=lambda p: (not p.startswith("timeline"), p))})
        return templates.TemplateResponse(request, "capture.html", {
            "user": user, "capture": detail, "result": row.result, "clients": clients, "causes": CAUSES,
            "cause_help": CAUSE_HELP})

    return app


# --- helpers ------------------------------------------------------------------------------------------------

DISK_FULL = "the server is short of disk space; try again later"


def _is_disk_full(exc: BaseException) -> bool:
    text = str(getattr(exc, "orig", None) or exc).lower()
    return "disk is full" in text or "no space left" in text or getattr(exc, "errno", None) == 28


def _job_limits(store: Store, max_capture_gb: float | None, max_ratio: float | None) -> dict:
    """Decompression limits of the server's analyses; their temporary files live under DATA_DIR/tmp."""
    from dataclasses import asdict, replace

    from analyzer.ingest.limits import GB, current

    limits = replace(current(), tmp_dir=str(store.tmp))
    if max_capture_gb is not None:
        limits = replace(limits, max_bytes=int(max_capture_gb * GB))
    if max_ratio is not None:
        limits = replace(limits, max_ratio=float(max_ratio))
    return asdict(limits)


def _swagger_ui_dir() -> str | None:
    try:
        from swagger_ui_bundle import swagger_ui_path
    except ImportError:
        return None
    return str(swagger_ui_path)



def _plot_names(row: Capture, store: Store) -> list[str]:
    """Plots on disk, or (not drawn yet: lazy plots) the names they will have when first requested."""
    if store.plot_dir(row.id).is_dir():
        return store.plot_names(row.id)
    if row.status != DONE:
        return []
    clients = (row.result or {}).get("clients", [])
    return sorted(f"{kind}-{_client_slug(c['client'])}" for c in clients for kind in ("timeline", "intervals"))


def _client_slug(client: str) -> str:
    try:
        from analyzer.report import client_slug
    except ImportError:  # the plots' naming rule (report stage): IP with ':' -> '-'
        return client.replace(":", "-")
    return client_slug(client)


def _own_captures(db: Database, user: User, limit: int = 500, offset: int = 0) -> list[Capture]:
    with db.session() as s:
        return list(s.scalars(select(Capture).where(Capture.user_id == user.id)
                              .order_by(Capture.uploaded_at.desc(), Capture.id).limit(limit).offset(offset)))


def _summary(row: Capture, store: Store, pool: WorkerPool) -> dict:
    result = row.result or {}
    return {
        "id": row.id,
        "status": row.status,
        "filename": row.filename,
        "size": row.size,
        "sha256": row.sha256,
        "uploaded_at": iso(row.uploaded_at),
        "finished_at": iso(row.finished_at),
        "error": row.error,
        "clients": len(result.get("clients", [])),
        "verdicts": row.verdict_counts(),
        "warnings": len(result.get("warnings", [])),
        "progress": _progress(row, pool),
    }


def _progress(row: Capture, pool: WorkerPool) -> float | None:
    """Fraction of the capture read so far while running (1.0 when finished, 0.0 while queued)."""
    if row.status == RUNNING:
        return round(pool.progress.get(row.id, 0.0), 3)
    return 1.0 if row.status in (DONE, FAILED) else 0.0


def _detail(row: Capture, store: Store, pool: WorkerPool) -> dict:
    return {
        "id": row.id,
        "status": row.status,
        "filename": row.filename,
        "sha256": row.sha256,
        "uploaded_at": iso(row.uploaded_at),
        "result": row.result,
        "error": row.error,
        # extensions
        "size": row.size,
        "started_at": iso(row.started_at),
        "finished_at": iso(row.finished_at),
        "verdicts": row.verdict_counts(),
        "progress": _progress(row, pool),
        "plots": _plot_names(row, store),
    }


def _result_or_409(row: Capture) -> CaptureResult:
    if row.result is None:
        state = {QUEUED: "is waiting to be analysed", RUNNING: "is being analysed"}.get(
            row.status, f"has no result ({row.error or row.status})")
        raise HTTPException(409, f"capture {state}; the report exists once the analysis is done")
    return CaptureResult.from_dict(row.result)


def _safe_next(target: str) -> str:
    """Only local paths after login (no open redirect to another site)."""
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def _clock(epoch: float | None) -> str:
    if epoch is None:
        return "—"
    try:
        t = dt.datetime.fromtimestamp(float(epoch), tz=dt.timezone.utc)
    except (OverflowError, OSError, ValueError):  # a damaged capture timestamp that is no calendar date
        return f"{float(epoch):.3f} (not a date)"
    return t.strftime("%Y-%m-%d %H:%M:%S.") + f"{t.microsecond // 1000:03d}"


__all__ = ["create_app", "DONE", "FAILED"]
