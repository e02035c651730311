"""Prometheus metrics of the web service, served at ``/metrics`` in the Prometheus text format (prometheus-client).

* ``mailpush_jobs{state}``            captures per job state (queued, running, done, failed): read from the
                                      database at each scrape, so they are right after a restart and across
                                      several servers sharing one PostgreSQL database;
* ``mailpush_queue_length{user}``     queued captures per user, from the database as well;
* ``mailpush_analysis_seconds{outcome}``  histogram of the time analyses of this process took (done or failed);
* ``mailpush_upload_bytes``           histogram of the size of accepted uploads (its _sum is the bytes received);
* ``mailpush_uploads_rejected_total{reason}``  uploads refused (too_large, bad_request, disk_full);
* ``mailpush_database_up``            1 when the database answered the scrape (the job gauges are then absent).

Each app has its own registry (several apps in one process, as in the tests, must not share counters).
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
import logging

from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from analyzer.web.db import STATUSES, QUEUED, Capture, Database, User

log = logging.getLogger("mailpush.web.metrics")

# Analyses take from well under a second (a few MB) to the 900 s default time limit.
ANALYSIS_BUCKETS = (0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 900)
UPLOAD_BUCKETS = tuple(float(2 ** k) for k in range(16, 34, 2))  # 64 KiB .. 8 GiB, x4 per bucket


class _DatabaseCollector:
    """Job gauges computed from the capture table when Prometheus scrapes."""

    def __init__(self, db: Database):
        self.db = db

    def describe(self):  # no database query at registration
        return []

    def collect(self):
        jobs = GaugeMetricFamily("mailpush_jobs", "Captures in each job state", labels=["state"])
        queue = GaugeMetricFamily("mailpush_queue_length", "Captures waiting for analysis, per user",
                                  labels=["user"])
        up = GaugeMetricFamily("mailpush_database_up", "1 when the database answered this scrape, else 0")
        try:
            with self.db.session() as s:
                by_state = dict(s.execute(select(Capture.status, func.count()).group_by(Capture.status)).all())
                per_user = s.execute(
                    select(User.name, func.count(Capture.id))
                    .join(Capture, (Capture.user_id == User.id) & (Capture.status == QUEUED), isouter=True)
                    .group_by(User.name)
                ).all()
        except SQLAlchemyError as exc:
            # The process metrics are still worth scraping; the outage shows as mailpush_database_up 0.
            log.warning("metrics: database unavailable (%s)", type(exc).__name__)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        for state in STATUSES:  # every state, 0 included: a rate or alert on a missing series sees nothing
            jobs.add_metric([state], by_state.get(state, 0))
        for name, count in sorted(per_user):
            queue.add_metric([name], count)
        yield jobs
        yield queue


class ServiceMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, db: Database):
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_DatabaseCollector(db))
        self.analysis_seconds = Histogram(
            "mailpush_analysis_seconds", "Time an analysis took, from starting its process to its result",
            ["outcome"], buckets=ANALYSIS_BUCKETS, registry=self.registry)
        self.upload_bytes = Histogram("mailpush_upload_bytes", "Size of accepted uploads in bytes",
                                      buckets=UPLOAD_BUCKETS, registry=self.registry)
        self.uploads_rejected = Counter("mailpush_uploads_rejected", "Uploads refused, by reason", ["reason"],
                                        registry=self.registry)

    def analysis_finished(self, outcome: str, seconds: float) -> None:
        self.analysis_seconds.labels(outcome).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
