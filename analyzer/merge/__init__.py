# SPDX-License-Identifier: GPL-2.0-or-later
"""Merge stage: a client-side and a server-side capture of one incident, lined up.

Public API::

    result = merge_captures(path_a, correlation_a, path_b, correlation_b)   # MergeResult; never raises
    result.status          # "merged", or why not ("no_shared_packets", "no_time_overlap", "not_read")
    result.clock           # ClockEstimate: offset, drift and their uncertainty
    result.datagrams       # DatagramFate per notification datagram: delivered / lost_in_transit / ...

It runs after correlate (it needs each capture's notifications and reactions) and before verdict
(:mod:`analyzer.verdict.transit` judges from it). Models: :mod:`analyzer.merge.model`.
"""

from analyzer.merge.model import (  # noqa: F401
    DELIVERED,
    FATES,
    LOST_IN_TRANSIT,
    MERGED,
    NO_SHARED_PACKETS,
    NO_TIME_OVERLAP,
    NOT_COVERED,
    NOT_READ,
    ONLY_AT_CLIENT,
    SAME_CAPTURE,
    ClockEstimate,
    DatagramFate,
    MergeResult,
    Rewrite,
)
from analyzer.merge.merge import merge_captures  # noqa: F401,E402
