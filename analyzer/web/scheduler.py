"""Which queued job runs next: per-user round robin, so one user's backlog never starves another user.

The next job belongs to the user with queued work who has the **fewest jobs running**; ties go to the user who
was served least recently (the latest start of any of their jobs; never served comes first), then to the oldest
upload. Within a user, uploads run oldest first. With 30 uploads from alice queued before bob's one, bob's job
is the next one a worker takes after alice's current one, not the 31st.

Claiming is the same conditional ``UPDATE … WHERE status = 'queued'`` as before, so two workers (threads here or
other processes sharing a PostgreSQL database) never take the same job.

Jobs whose result could not be saved (disk or database full) end ``failed`` with :data:`NOT_SAVED` in their
error; :func:`requeue_unsaved` puts them back in the queue when space returns and at start.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import func, select, update

from analyzer.web.db import FAILED, QUEUED, RUNNING, Capture, Database, utcnow

NOT_SAVED = "the result could not be saved"


def claim_next_fair(db: Database) -> str | None:
    """Atomically move the next queued capture (fair order) to ``running``; None when the queue is empty.

    The conditional UPDATE (``WHERE status = 'queued'``) is what makes two workers never take the same job,
    whether they are threads here or other processes sharing a PostgreSQL database."""
    for _ in range(50):
        with db.session.begin() as s:
            waiting = s.execute(
                select(Capture.user_id, func.min(Capture.uploaded_at))
                .where(Capture.status == QUEUED).group_by(Capture.user_id)
            ).all()
            if not waiting:
                return None
            running = dict(s.execute(
                select(Capture.user_id, func.count()).where(Capture.status == RUNNING).group_by(Capture.user_id)
            ).all())
            users = [row[0] for row in waiting]
            served = dict(s.execute(
                select(Capture.user_id, func.max(Capture.started_at)).where(Capture.user_id.in_(users))
                .group_by(Capture.user_id)
            ).all())
            never = dt.datetime.min
            user_id = min(waiting, key=lambda row: (running.get(row[0], 0), served.get(row[0]) or never, row[1],
                                                    row[0]))[0]
            job_id = s.scalar(
                select(Capture.id).where(Capture.status == QUEUED, Capture.user_id == user_id)
                .order_by(Capture.uploaded_at, Capture.id).limit(1)
            )
            if job_id is None:
                continue
            claimed = s.execute(
                update(Capture)
                .where(Capture.id == job_id, Capture.status == QUEUED)
                .values(status=RUNNING, started_at=utcnow(), attempts=Capture.attempts + 1)
            ).rowcount
        if claimed == 1:
            return job_id
        # another worker took it between the SELECT and the UPDATE: choose again
    return None


def mark_not_saved(db: Database, capture_id: str, reason: str) -> None:
    """The job ran but its result could not be stored: ``failed`` with the reason (a short write that may
    succeed where the result, often much larger, did not)."""
    with db.session.begin() as s:
        s.execute(
            update(Capture).where(Capture.id == capture_id, Capture.status == RUNNING)
            .values(status=FAILED, finished_at=utcnow(), result_json=None,
                    error=f"{NOT_SAVED} ({reason}); it is analysed again when the server has room")
        )


def requeue_unsaved(db: Database) -> int:
    """Put the jobs that failed only because their result could not be saved back in the queue."""
    with db.session.begin() as s:
        return s.execute(
            update(Capture).where(Capture.status == FAILED, Capture.error.like(f"{NOT_SAVED}%"))
            .values(status=QUEUED, error=None, finished_at=None, started_at=None, attempts=0)
        ).rowcount
