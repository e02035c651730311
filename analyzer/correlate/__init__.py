"""Correlate stage: events + CaptureInfo -> CorrelationResult (ClientActivity per Outlook client).

Public API::

    correlation = correlate(events, info, vantage="auto")   # vantage "client"/"server" overrides inference

Models: analyzer.correlate.model.
"""

from analyzer.correlate.correlate import correlate, infer_vantage, split_endpoint  # noqa: F401
from analyzer.correlate.model import (  # noqa: F401
    AsyncWait,
    ClientActivity,
    Connection,
    CorrelationResult,
    IcmpError,
    MailEvidence,
    Notification,
    Registration,
    RpcCall,
)
