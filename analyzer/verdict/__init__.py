"""Verdict stage: ClientActivity (from correlate) -> ClientVerdict; assembles the CaptureResult.

Public API::

    verdicts = judge_clients(correlation)      # list[ClientVerdict], one per client in the CorrelationResult
    result = build_capture_result(info, correlation, verdicts)   # CaptureResult

Models and the JSON contract: analyzer.verdict.model.
"""

from analyzer.verdict.model import (  # noqa: F401
    CAUSES,
    TIMELINE_LANES,
    VANTAGES,
    VERDICTS,
    CaptureResult,
    ClientVerdict,
    EvidenceItem,
    TimelineMark,
)
from analyzer.verdict.judge import build_capture_result, display_filter, judge_client, judge_clients  # noqa: F401,E402
from analyzer.verdict.causes import CAUSE_TABLE, MEANINGS, REMEDIES, Cause, remedy_for  # noqa: F401,E402
