"""Dissect stage: FrameBatch stream -> protocol events.

Public API (the contract later stages use)::

    events, info = dissect_capture(path, engine="native")   # list[Event], CaptureInfo (ingest's)
    df = events_dataframe(path, engine="native")              # pandas DataFrame, schema in analyzer.dissect.model
    events = dissect_batches(batches, info)                   # native engine over an ingest stream

``engine="tshark"`` runs the same through tshark (pyshark) and returns the same schema. Errors reading the file
raise ``analyzer.ingest.CaptureError``; damage inside the file becomes warnings in ``info.warnings``.
"""

from analyzer.dissect.model import (  # noqa: F401
    ConnectionWarning,
    EVENT_COLUMNS,
    EVENT_KINDS,
    INTERFACE_SOURCES,
    Event,
    dataframe_to_events,
    events_to_dataframe,
)
from analyzer.dissect.engine import dissect_batches, dissect_capture, events_dataframe  # noqa: F401
