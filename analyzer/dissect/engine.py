# SPDX-License-Identifier: GPL-2.0-or-later
"""The dissect stage's entry points (contract in :mod:`analyzer.dissect`): the native engine wires the ingest
stream through :class:`analyzer.dissect.transport.Transport` into the application analyser
(:class:`analyzer.dissect.collector.EventCollector`); ``engine="tshark"`` hands the file to tshark instead."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Iterable

from analyzer.dissect.model import Event, events_to_dataframe
from analyzer.dissect.stream import PacketSink
from analyzer.dissect.transport import Transport
from analyzer.ingest import CaptureInfo, FrameBatch, open_capture
from analyzer.stagetimes import active as active_clock

if TYPE_CHECKING:
    from analyzer.dissect.secrets import Secrets

ENGINES = ("native", "tshark")


def dissect_batches(batches: Iterable[FrameBatch], info: CaptureInfo, sink: PacketSink | None = None,
                    secrets: Secrets | None = None) -> list[Event]:
    """Run the native engine over an ingest stream. Warnings go to ``info.warnings``. With ``sink`` given, it
    receives the transport's calls and its ``finish()`` result (if it has one) is returned. With ``secrets``,
    NTLMSSP-sealed stubs are decrypted (:mod:`analyzer.dissect.ntlmssp`)."""
    if sink is None:
        from analyzer.dissect.collector import EventCollector

        # info.warnings is replaced when iteration starts: look the list up at warning time
        def warn(message: str) -> None:
            info.warnings.append(message)

        decryptor = None
        if secrets:
            from analyzer.dissect.ntlmssp import SessionDecryptor

            decryptor = SessionDecryptor(secrets, warn)
        sink = EventCollector(warn=warn, decryptor=decryptor)
    transport = Transport(sink)
    clock = active_clock()
    if clock is not None:  # `--profile`: charge each layer's calls to its stage (see analyzer.stagetimes)
        batches, sink = _timed(clock, batches, transport, sink)
    feed = transport.feed
    for batch in batches:
        feed(batch)
    transport.finish()
    finish = getattr(sink, "finish", None)
    return finish() if callable(finish) else []


# The PacketSink calls: the application analyser's work (DCE/RPC and above)
_SINK_CALLS = ("is_interesting_tcp", "tcp_data", "tcp_gap", "tcp_close", "udp", "icmp_error", "finish")


def _timed(clock, batches, transport: Transport, sink):
    """Instance-level wrappers, so the classes stay untouched: what the reader takes to produce a batch is
    ingest, the transport's numpy pass is the pre-filter, the sink's calls are DCE/RPC, and the rest of the
    transport (per-frame link/IP parsing, TCP reassembly) is TCP."""
    for name in _SINK_CALLS:
        method = getattr(sink, name, None)
        if callable(method):
            setattr(sink, name, clock.wrap("DCE/RPC", method))
    transport._prefilter = clock.wrap("pre-filter", transport._prefilter)
    transport.feed = clock.wrap("TCP", transport.feed)
    transport.finish = clock.wrap("TCP", transport.finish)
    return clock.iterate("ingest", batches), sink


def dissect_capture(path, engine: str = "native", progress: Callable[[int, int], None] | None = None,
                    secrets: Secrets | None = None) -> tuple[list[Event], CaptureInfo]:
    """Events of one capture file and what the reader learned about it. Raises ``CaptureError`` when the file
    cannot be read at all; ``ValueError`` for an unknown engine. ``secrets`` (see
    :mod:`analyzer.dissect.secrets`) decrypt NTLMSSP-sealed sessions in either engine."""
    if engine == "tshark":
        from analyzer.dissect.tshark_engine import dissect_with_tshark

        if secrets:  # (the plain call stays as it was: the tshark engine's signature is shared with other work)
            return dissect_with_tshark(str(path), progress=progress, secrets=secrets)
        return dissect_with_tshark(str(path), progress=progress)
    if engine != "native":
        raise ValueError(f"unknown engine {engine!r} (choose from {', '.join(ENGINES)})")
    with open_capture(path) as cap:
        events = dissect_batches(cap.batches(progress=progress), cap.info, secrets=secrets)
        return events, cap.info


def events_dataframe(path, engine: str = "native", secrets: Secrets | None = None):
    """The events table of one capture as a pandas DataFrame (schema in :mod:`analyzer.dissect.model`)."""
    events, _info = dissect_capture(path, engine=engine, secrets=secrets)
    return events_to_dataframe(events)
