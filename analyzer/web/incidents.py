# SPDX-License-Identifier: GPL-2.0-or-later
"""Incidents in the web service: two uploaded captures of one incident (client side and server side), merged.

* ``POST /api/incidents`` with ``{"captures": [id, id]}`` (two of your captures, either order) queues a merge;
  the answer (202) has the incident's id and URL. The upload page has a form for the same.
* ``GET /api/incidents`` lists yours; ``GET /api/incidents/{id}`` gives status and, when done, the merge (the
  ``merges`` element of ``mailpush analyze --merge --format json``); ``GET /api/incidents/{id}/report.html`` is
  the HTML report of both captures plus the merge; ``DELETE`` removes the incident (not the captures).

Like analyses, merges never run inside a request: an incident row *is* the job (``queued -> running -> done |
failed``), taken by a worker thread that runs the merge in a child process of the same fork server, with the
same time limit. A capture's deletion deletes its incidents (foreign key, ON DELETE CASCADE).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import secrets
import threading
import time
import traceback

from fastapi import Depends, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from sqlalchemy import DateTime, ForeignKey, Integer, String, Text, select, update
from sqlalchemy.orm import Mapped, mapped_column

from analyzer.web.db import DONE, FAILED, QUEUED, RUNNING, Base, Capture, iso, utcnow

log = logging.getLogger("mailpush.web.incidents")
INCIDENT_ID_RE = re.compile(r"^[0-9a-f]{16}$")


class Incident(Base):
    __tablename__ = "incidents"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    capture_a: Mapped[str] = mapped_column(ForeignKey("captures.id", ondelete="CASCADE"), index=True)
    capture_b: Mapped[str] = mapped_column(ForeignKey("captures.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, index=True)
    status: Mapped[str] = mapped_column(String(16), default=QUEUED, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    result_json: Mapped[str | None] = mapped_column(Text, nullable=True)  # MergedIncident.to_dict()

    @property
    def result(self) -> dict | None:
        return None if self.result_json is None else json.loads(self.result_json)


# ------------------------------------------------------------------------------------------------ the jobs


class IncidentWorker:
    """One thread taking queued incidents; each merge runs in a child process (see analyzer.web.worker)."""

    def __init__(self, db, store, job_timeout_s: float, limits: dict | None = None):
        self.db, self.store, self.job_timeout_s = db, store, job_timeout_s
        self.limits = limits  # the server's decompression limits, applied in every merge's process as in analyses
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        with self.db.session.begin() as s:  # interrupted by a stop: merge again
            s.execute(update(Incident).where(Incident.status == RUNNING).values(status=QUEUED))
        self._thread = threading.Thread(target=self._loop, name="mailpush-incidents", daemon=True)
        self._thread.start()

    def notify(self) -> None:
        self._wake.set()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _claim(self) -> str | None:
        with self.db.session.begin() as s:
            job = s.scalar(select(Incident.id).where(Incident.status == QUEUED).order_by(Incident.created_at)
                           .limit(1))
            if job is None:
                return None
            claimed = s.execute(update(Incident).where(Incident.id == job, Incident.status == QUEUED)
                                .values(status=RUNNING, attempts=Incident.attempts + 1)).rowcount
        return job if claimed == 1 else None

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                job = self._claim()
            except Exception:  # database briefly locked: retry
                log.exception("could not take an incident from the queue")
                job = None
            if job is not None:
                result, error = self._run(job)
                with self.db.session.begin() as s:
                    s.execute(update(Incident).where(Incident.id == job, Incident.status == RUNNING).values(
                        status=FAILED if error else DONE, finished_at=utcnow(), error=error,
                        result_json=None if result is None else json.dumps(result)))
                continue
            self._wake.wait(1.0)
            self._wake.clear()

    def _run(self, incident_id: str) -> tuple[dict | None, str | None]:
        from analyzer.web.worker import _MP

        with self.db.session() as s:
            inc = s.get(Incident, incident_id)
            rows = [s.get(Capture, inc.capture_a), s.get(Capture, inc.capture_b)] if inc else []
        if not rows or None in rows:
            return None, "a capture of this incident was deleted"
        paths = [str(self.store.capture_path(r.id)) for r in rows]
        names = [r.filename for r in rows]
        receiver, sender = _MP.Pipe(duplex=False)
        child = _MP.Process(target=merge_in_child, args=(paths, names, sender, self.limits),
                            name=f"mailpush-merge-{incident_id}")
        deadline = time.monotonic() + self.job_timeout_s
        child.start()
        sender.close()
        try:
            while True:
                if self._stop.is_set():
                    return None, "the server stopped during the merge; it is merged again at the next start"
                if receiver.poll(0.25):
                    try:
                        outcome = receiver.recv()
                    except EOFError:
                        return None, f"the merge process ended without a result (exit status {child.exitcode})"
                    break
                if time.monotonic() > deadline:
                    return None, f"merge stopped after the time limit of {self.job_timeout_s:g} s"
                if not child.is_alive() and not receiver.poll(0):
                    return None, f"the merge process ended without a result (exit status {child.exitcode})"
        finally:
            if child.is_alive():
                child.kill()
            child.join(10)
            receiver.close()
        if outcome[0] == "crash":
            log.error("merge of incident %s raised:\n%s", incident_id, outcome[2])
            return None, f"internal error while merging ({outcome[1]})"
        return json.loads(outcome[1]), None


def merge_in_child(paths: list[str], names: list[str], conn, limits: dict | None = None) -> None:
    """Child process: merge the two stored captures; the report names them by their upload names, never by
    the server's storage paths. Like an analysis (``analyse_in_child``) it leads its own process group, dies with
    the server and reads under the server's decompression limits."""
    from analyzer.web.jobs import enter_job_process
    from analyzer.web.worker import apply_job_limits

    enter_job_process()
    try:
        apply_job_limits(limits)
        from analyzer.pipeline import merge_pair

        incident = merge_pair(paths[0], paths[1])
        text = json.dumps(incident.to_dict())
        for path, name in zip(paths, names):  # every mention (file keys, message, reasons, evidence)
            text = text.replace(json.dumps(path)[1:-1], json.dumps(name)[1:-1])
        conn.send(("result", text))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent as this job's failure
        conn.send(("crash", f"{type(exc).__name__}: {exc}", traceback.format_exc()))
    finally:
        conn.close()


# ------------------------------------------------------------------------------------------------ the routes


def _doc(row: Incident) -> dict:
    return {"id": row.id, "status": row.status, "captures": [row.capture_a, row.capture_b],
            "created_at": iso(row.created_at), "finished_at": iso(row.finished_at), "error": row.error,
            "result": row.result, "url": f"/api/incidents/{row.id}", "report": f"/api/incidents/{row.id}/report.html"}


def register_routes(app, db, worker: IncidentWorker, api_user, own_capture, report_csp: str) -> None:
    def own_incident(incident_id: str, user) -> Incident:
        if not INCIDENT_ID_RE.match(incident_id):
            raise HTTPException(404, "no such incident")
        with db.session() as s:
            row = s.get(Incident, incident_id)
        if row is None or row.user_id != user.id:
            raise HTTPException(404, "no such incident")
        return row

    @app.post("/api/incidents", status_code=202, tags=["incidents"],
              summary="Merge two of your captures as one incident (client side and server side, either order)",
              openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": {
                  "type": "object", "required": ["captures"],
                  "properties": {"captures": {"type": "array", "items": {"type": "string"}, "minItems": 2,
                                              "maxItems": 2}}}}}}})
    async def create_incident(request: Request, user=Depends(api_user)):
        try:
            body = await request.json()
            ids = body["captures"]
            assert isinstance(ids, list) and all(isinstance(i, str) for i in ids)
        except Exception:
            raise HTTPException(400, 'expected a JSON body {"captures": ["<capture id>", "<capture id>"]}')
        if len(ids) != 2 or ids[0] == ids[1]:
            raise HTTPException(400, "an incident is two different captures: the client side and the server side")
        for capture_id in ids:
            own_capture(capture_id, user)  # 404 for another user's capture, as everywhere
        incident_id = secrets.token_hex(8)
        with db.session.begin() as s:
            s.add(Incident(id=incident_id, user_id=user.id, capture_a=ids[0], capture_b=ids[1], status=QUEUED,
                           created_at=utcnow()))
        worker.notify()
        with db.session() as s:
            row = s.get(Incident, incident_id)
        return JSONResponse(_doc(row), status_code=202, headers={"Location": f"/api/incidents/{incident_id}"})

    @app.get("/api/incidents", tags=["incidents"], summary="Your incidents, newest first")
    def list_incidents(user=Depends(api_user)):
        with db.session() as s:
            rows = list(s.scalars(select(Incident).where(Incident.user_id == user.id)
                                  .order_by(Incident.created_at.desc()).limit(500)))
        return {"incidents": [dict(_doc(r), result=None) for r in rows]}

    @app.get("/api/incidents/{incident_id}", tags=["incidents"], summary="One incident: status and merge")
    def get_incident(incident_id: str, user=Depends(api_user)):
        return _doc(own_incident(incident_id, user))

    @app.get("/api/incidents/{incident_id}/report.html", tags=["incidents"], response_class=HTMLResponse,
             summary="HTML report of both captures and their merge (plots embedded)")
    def incident_report(incident_id: str, user=Depends(api_user)):
        from analyzer.report.html import render_html
        from analyzer.verdict.model import CaptureResult
        from analyzer.verdict.transit import MergedIncident

        row = own_incident(incident_id, user)
        if row.result is None:
            raise HTTPException(409, f"incident is {row.status}" + (f" ({row.error})" if row.error else "")
                                + "; the report exists once the merge is done")
        results = []
        for capture_id in (row.capture_a, row.capture_b):
            capture = own_capture(capture_id, user)
            if capture.result is not None:
                results.append(CaptureResult.from_dict(capture.result))
        incident = MergedIncident.from_dict(row.result)
        html = render_html(results, title=f"mailpush incident: {incident.client_file} + {incident.server_file}",
                           incidents=[incident])
        return HTMLResponse(html, headers={"Content-Security-Policy": report_csp})

    @app.delete("/api/incidents/{incident_id}", status_code=204, tags=["incidents"],
                summary="Delete an incident (its captures stay)")
    def delete_incident(incident_id: str, user=Depends(api_user)):
        own_incident(incident_id, user)
        with db.session.begin() as s:
            row = s.get(Incident, incident_id)
            if row is not None:
                s.delete(row)
        return Response(status_code=204)
