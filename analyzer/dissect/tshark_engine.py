"""Second dissect engine: the events table through tshark, driven by pyshark (``--engine tshark``).

``dissect_with_tshark(path, progress=None) -> (list[Event], CaptureInfo)`` gives the same schema as the native
engine (analyzer.dissect.model), for captures whose link layer or encapsulation the native reader does not handle
and as an independent cross-check of it.

What tshark gives and what is done here (docs/protocol.md §3):

* tshark dissects each DCE/RPC connection-oriented PDU (dynamic ports through the ``dcerpc_tcp`` heuristic), with
  TCP desegmentation and ``tcp.reassemble_out_of_order``. A frame can hold several PDUs: in tshark's JSON
  (``--no-duplicate-keys``) the ``dcerpc`` layer is then a list with one dict per PDU, in wire order, and pyshark
  hands the first as the layer and the others as ``duplicate_layers``. One Event per PDU dict.
* ``--disable-protocol mapi``: tshark 4.0's EMSMDB dissector mis-reads the opnum 4 request. With it (and epm,
  nspi) off, the stub stays in ``dcerpc.stub_data`` and is decoded by the shared decoders
  (``analyzer.dissect.emsmdb``, ``analyzer.dissect.epm``), exactly as the native engine does.
* Each PDU becomes a :class:`analyzer.dissect.rpc_session.PduRecord` (header fields, the parsed bind / ack
  contexts, the stub) for the session analyser the native engine uses too
  (:class:`analyzer.dissect.rpc_session.RpcSessionAnalyser`): contexts, interface learning (ept_map answers and
  bind_ack secondary addresses teach port -> interface, which tshark itself does not do; port 135 = EPM),
  fragments, call matching, memory bounds and the events are the same code for both engines.
* DCE/RPC fragment reassembly is switched OFF (``dcerpc.reassemble_dcerpc:FALSE``) and fragments are joined by the
  analyser, per (TCP stream, direction, call_id): with tshark's reassembly on, the reassembled stub of a call whose
  LAST fragment shares a frame with another PDU is emitted outside the PDU's JSON object (at the top of the
  frame's layers), so which PDU it belongs to is ambiguous. With reassembly off, each fragment's own stub is either
  in its PDU dict or (same JSON quirk) at the frame's top level; a stub is attributed to a PDU only when its length
  equals the length the PDU header implies (frag_len - headers - auth trailer), so a misplaced stub is never
  misassigned. A stub found nowhere is handed over as missing, and the call's fields are not decoded.
* With ``--secrets`` tshark unseals NTLMSSP stubs itself (keytab, ``dcerpc.decrypted_stub_data``): the record
  carries the clear stub.
* UDP rows: both ports >= 1024 and not connectionless DCE/RPC (the native rule: version 4, PTYPE <= 10, >= 80
  bytes), payload from ``udp.payload``.
  ICMP/ICMPv6 destination-unreachable quoting a UDP datagram: tshark nests the quoted IP and UDP headers inside the
  icmp/icmpv6 layer.

pyshark faults contained (issue 2):

* Inside Jupyter an asyncio loop is already running and pyshark's synchronous iteration fails ("This event loop
  is already running"): pyshark always runs in a worker thread with its own fresh event loop.
* Leftover tshark processes: the capture is closed in ``finally`` (pyshark kills and reaps its tshark), and the
  loop is closed after it.
* A cut file makes tshark exit with an error ("appears to have been cut short in the middle of a packet") and
  pyshark raise TSharkCrashException: the events read so far are kept and a warning is added.

Measured (this machine, tshark 4.0.17, pyshark 0.6, 2 cores shared, load average about 8): 5,000 UDP frames take
7.97 s through this engine, of which tshark itself (``tshark -T json`` with the same options, output to a pipe)
takes 4.90 s and json.loads 0.47 s; pyshark's own packet objects add about 0.6 ms per frame. tshark dominates, so
pyshark is kept (the project's chosen second engine) rather than a direct tshark call. On the 70-frame public
captures a run is about 0.8-1.5 s, mostly tshark start-up. For million-frame captures use the native engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import shutil
import sys
import tempfile
import threading
import warnings as warnings_module

from analyzer.dissect.codes import AuthType
from analyzer.dissect.dcerpc import (
    AUTH_LEVEL_PKT_PRIVACY,
    HEADER_LEN,
    PFC_OBJECT_UUID,
    PTYPE_ALTER_CONTEXT,
    PTYPE_ALTER_CONTEXT_RESP,
    PTYPE_BIND,
    PTYPE_BIND_ACK,
    PTYPE_BIND_NAK,
    PTYPE_FAULT,
    PTYPE_REQUEST,
    PTYPE_RESPONSE,
    BindAckPdu,
    BindPdu,
    Body,
    CallPdu,
    ContextItem,
    ContextResult,
    Header,
)
from analyzer.dissect.model import PTYPE_KIND, Event
from analyzer.dissect.rpc_session import PduRecord, RpcSessionAnalyser
from analyzer.dissect.transport import DCERPC_CL_HEADER_LEN, DCERPC_CL_MAX_PTYPE, DCERPC_CL_VERSION
from analyzer.dissect.tshark_secrets import tshark_secrets_env, undecrypted_warnings
from analyzer.ingest import CaptureError, CaptureInfo

TSHARK_NOT_FOUND = "tshark not found: install the Debian package tshark, or use --engine native"
UDP_HEX_BYTES = 64  # as the native engine: udp rows keep the first 64 payload bytes as hex
# Sizes tshark does not give per PDU (C706 12.6): the request/response header after the common one (alloc_hint,
# p_cont_id, opnum or cancel_count), the fault's (+ status, reserved), the object UUID, the sec_trailer.
CALL_HEADER_LEN = 8
FAULT_HEADER_LEN = 16
OBJECT_UUID_LEN = 16
SEC_TRAILER_LEN = 8

# Layers tshark writes into the JSON (-J): everything else is not needed and only costs parse time.
JSON_LAYERS = "frame ip ipv6 tcp udp icmp icmpv6 dcerpc"
TSHARK_PARAMETERS = [
    "-o", "tcp.reassemble_out_of_order:TRUE",
    "-o", "tcp.desegment_tcp_streams:TRUE",
    # heuristics before port-registered dissectors: Exchange's RPC ports 6001-6004 are registered to X11 in
    # tshark, which would otherwise claim EMSMDB connections learned from the endpoint mapper (test_engines_compare)
    "-o", "tcp.try_heuristic_first:TRUE",
    "-o", "dcerpc.desegment_dcerpc:TRUE",
    "-o", "dcerpc.reassemble_dcerpc:FALSE",  # fragments are joined here: see the module doc
    # the stub must stay in dcerpc.stub_data; mapi mis-dissects the opnum 4 request (docs/protocol.md §3.1)
    "--disable-protocol", "mapi",
    "--disable-protocol", "epm",
    "--disable-protocol", "nspi",
    "--disable-protocol", "rfr",
    "-J", JSON_LAYERS,
]
PROGRESS_EVERY = 1000  # frames between progress callbacks
_PYSHARK_LOCK = threading.Lock()


class TsharkNotFound(CaptureError):
    """tshark is not installed (or not on PATH): the tshark engine cannot run."""


# ---------------------------------------------------------------------------------------------- JSON helpers


def _collect(node, key: str, out: list | None = None) -> list:
    """Every value of ``key`` anywhere below ``node`` (dicts and lists from tshark's JSON), in document order."""
    if out is None:
        out = []
    if isinstance(node, dict):
        for k, v in node.items():
            if k == key:
                if isinstance(v, list):
                    out.extend(v)
                else:
                    out.append(v)
            elif isinstance(v, (dict, list)):
                _collect(v, key, out)
    elif isinstance(node, list):
        for v in node:
            _collect(v, key, out)
    return out


def _first(node, key: str):
    found = _collect(node, key)
    return found[0] if found else None


def _int(value) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, list):
        value = value[0]
    return int(value, 0) if isinstance(value, str) and value.startswith("0x") else int(value)


def _hex_bytes(value: str | None) -> bytes:
    """tshark's bytes text "0a:00:05" (or "" for none) -> bytes."""
    if not value:
        return b""
    return bytes.fromhex(value.replace(":", ""))


def _carrier_ip(layers: dict, protocols: str):
    """(prefix, fields) of the IP header the transport layer rides on: the last IP before the first TCP, UDP or
    ICMP in ``frame.protocols`` (the tunnelled header of IP in IP, as the native engine takes it; the outer one of
    a VXLAN or GRE payload). pyshark folds repeated layers of one name into one list, so the position is read from
    the protocol path."""
    seen = {"ip": 0, "ipv6": 0}
    carrier = None
    for token in protocols.split(":"):
        if token in seen:
            carrier = (token, seen[token])
            seen[token] += 1
        elif token in ("tcp", "udp", "icmp", "icmpv6"):
            break
    if carrier is None:  # no protocol path: the first IP layer, IPv4 first
        name = "ip" if "ip" in layers else "ipv6"
        return name, (layers.get(name) or [None])[0]
    found = layers.get(carrier[0]) or []
    return carrier[0], found[carrier[1]] if carrier[1] < len(found) else None


def _connectionless_dcerpc(payload: bytes) -> bool:
    """The native transport's rule: version byte 4, PTYPE <= 10 and at least the 80-byte header. A lone first
    byte 4 is not enough: the context blob a client registers is opaque and may start with 4."""
    return len(payload) >= DCERPC_CL_HEADER_LEN and payload[0] == DCERPC_CL_VERSION \
        and payload[1] <= DCERPC_CL_MAX_PTYPE


def _as_list(value) -> list:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


# ---------------------------------------------------------------------------------------------- PDU records


def _own_stub_len(pdu: dict, ptype: int, flags: int, frag_len: int, auth_len: int) -> int:
    """Stub bytes of this one fragment, from the header: frag_len - common header - request/response/fault header
    (object UUID included) - auth trailer (padding + sec_trailer + verifier)."""
    header = HEADER_LEN + (FAULT_HEADER_LEN if ptype == PTYPE_FAULT else CALL_HEADER_LEN)
    if ptype == PTYPE_REQUEST and flags & PFC_OBJECT_UUID:
        header += OBJECT_UUID_LEN
    trailer = auth_len + SEC_TRAILER_LEN + (_int(_first(pdu, "dcerpc.auth_pad_len")) or 0) if auth_len else 0
    return max(0, frag_len - header - trailer)


def _stub_bytes(pdu: dict, size: int, loose: list[bytes]) -> bytes | None:
    for value in _as_list(pdu.get("dcerpc.stub_data")):
        data = _hex_bytes(value)
        if len(data) == size:
            return data
    for value in _as_list(pdu.get("dcerpc.stub_data")):
        # inside the PDU's own dict the stub is this PDU's; tshark 4.0 runs it on over the auth trailer when
        # no binding is known and the level is connect (2) (the wiki mgove413 capture): the header's size wins
        data = _hex_bytes(value)
        if len(data) > size:
            return data[:size]
    for i, data in enumerate(loose):
        if len(data) == size:
            return loose.pop(i)
    return b"" if size == 0 else None


def _context_items(pdu: dict) -> list[ContextItem]:
    offered = []
    for item in _as_list(pdu.get("dcerpc.cn_ctx_item")):
        uuid = _first(item, "dcerpc.cn_bind_to_uuid")
        if uuid is None:
            continue
        transfers = [(str(t).lower(), 0) for t in _collect(item, "dcerpc.cn_bind_trans_id")]
        offered.append(ContextItem(_int(item.get("dcerpc.cn_ctx_id")), str(uuid).lower(),
                                   _int(_first(item, "dcerpc.cn_bind_if_ver")) or 0,
                                   _int(_first(item, "dcerpc.cn_bind_if_ver_minor")) or 0, transfers))
    return offered


def _context_results(pdu: dict) -> list[ContextResult]:
    results = [_int(r) for r in _collect(pdu, "dcerpc.cn_ack_result")]
    transfers = [str(t).lower() for t in _collect(pdu, "dcerpc.cn_ack_trans_id")]
    return [ContextResult(result, 0, transfers[i] if i < len(transfers) else "", 0)
            for i, result in enumerate(results)]


STUB_NOT_FROM_TSHARK = ("stub bytes not available from tshark (first fragment(s) not in the capture, or taken by "
                        "a tshark sub-dissector)")


class _EventBuilder:
    """Turns pyshark JSON packets into Events: UDP and ICMP rows here, DCE/RPC PDUs as records for the shared
    session analyser (:mod:`analyzer.dissect.rpc_session`)."""

    def __init__(self):
        self.events: list[Event] = []
        self.warnings: list[str] = []  # the analyser's (the same texts as the native engine's)
        self.session = RpcSessionAnalyser(self.events, self.warnings.append)
        self.labels = self.session.labels
        self.ends: dict[int, tuple[str, int]] = {}  # tcp.stream -> the client end (sender of its first PDU)
        self.frames = 0
        self.stop = threading.Event()  # set by the caller's thread to end the run early (KeyboardInterrupt)
        self.first_time: float | None = None
        self.last_time: float | None = None
        self.kerberos_conns: set[int] = set()  # connections with Kerberos-sealed stubs (for the --secrets warning)

    # -------------------------------------------------------------------------------------------- packets

    def packet(self, pkt) -> None:
        layers: dict[str, list] = {}
        for layer in pkt.layers:
            values = [layer] + list(getattr(layer, "duplicate_layers", []))
            layers.setdefault(layer.layer_name, []).extend(
                v._all_fields if v._all_fields else getattr(v, "value", None) for v in values)
        frame = int(pkt.number)
        time = float(pkt.frame_info._all_fields.get("frame.time_epoch", 0.0))
        self.frames += 1
        if self.first_time is None:
            self.first_time = time
        self.last_time = time
        prefix, ip = _carrier_ip(layers, pkt.frame_info._all_fields.get("frame.protocols", ""))
        if not isinstance(ip, dict):
            return
        src, dst = ip.get(f"{prefix}.src"), ip.get(f"{prefix}.dst")
        if "tcp" in layers and "dcerpc" in layers:
            protocols = pkt.frame_info._all_fields.get("frame.protocols", "")
            if ":nbss" in protocols or ":smb" in protocols:
                return  # ncacn_np (DCE/RPC in SMB named pipes): not in the events table, as in the native engine
            self._tcp_pdus(frame, time, src, dst, layers)
        elif "udp" in layers:
            self._udp(frame, time, src, dst, layers["udp"][0])
        elif "icmp" in layers or "icmpv6" in layers:
            self._icmp(frame, time, src, dst, layers)

    def _udp(self, frame, time, src, dst, udp: dict) -> None:
        sport, dport = _int(udp.get("udp.srcport")), _int(udp.get("udp.dstport"))
        if sport is None or dport is None or sport < 1024 or dport < 1024:
            return
        payload = _hex_bytes(udp.get("udp.payload"))
        if _connectionless_dcerpc(payload):  # never a push notification
            return
        length = _int(udp.get("udp.length"))
        self.events.append(Event(frame=frame, time=time, src=src, dst=dst, sport=sport, dport=dport, kind="udp",
                                 stub_len=len(payload) if payload or length is None else max(0, length - 8),
                                 context_hex=payload[:UDP_HEX_BYTES].hex()))

    def _icmp(self, frame, time, src, dst, layers) -> None:
        v6 = "icmpv6" in layers
        icmp = layers["icmpv6" if v6 else "icmp"][0]
        if not isinstance(icmp, dict):
            return
        icmp_type, icmp_code = _int(icmp.get(f"{'icmpv6' if v6 else 'icmp'}.type")), \
            _int(icmp.get(f"{'icmpv6' if v6 else 'icmp'}.code"))
        quoted_ip, quoted_udp = icmp.get("ipv6" if v6 else "ip"), icmp.get("udp")
        if (icmp_type != (1 if v6 else 3)) or not isinstance(quoted_ip, dict) or not isinstance(quoted_udp, dict):
            return
        prefix = "ipv6" if v6 else "ip"
        self.events.append(Event(frame=frame, time=time, src=src, dst=dst, sport=None, dport=None,
                                 kind="icmp_unreachable", icmp_type=icmp_type, icmp_code=icmp_code,
                                 quoted_src=quoted_ip.get(f"{prefix}.src"), quoted_dst=quoted_ip.get(f"{prefix}.dst"),
                                 quoted_sport=_int(quoted_udp.get("udp.srcport")),
                                 quoted_dport=_int(quoted_udp.get("udp.dstport"))))

    # -------------------------------------------------------------------------------------------- DCE/RPC

    def _tcp_pdus(self, frame, time, src, dst, layers) -> None:
        tcp = layers["tcp"][0]
        stream_no = _int(tcp.get("tcp.stream"))
        sport, dport = _int(tcp.get("tcp.srcport")), _int(tcp.get("tcp.dstport"))
        # stubs tshark put at the frame's top level instead of inside their PDU (see module doc)
        loose_stubs = [_hex_bytes(v) for v in layers.get("dcerpc.stub_data", []) if isinstance(v, str)]
        for pdu in layers["dcerpc"]:
            if not isinstance(pdu, dict) or "dcerpc.cn_call_id" not in pdu:
                continue  # not a connection-oriented PDU
            ptype = _int(pdu.get("dcerpc.pkt_type"))
            if PTYPE_KIND.get(ptype) is None:
                continue
            record = self._record(pdu, ptype, stream_no, frame, time, src, sport, dst, dport, loose_stubs)
            self.session.pdu(record)

    def _record(self, pdu: dict, ptype: int, stream_no: int, frame, time, src, sport, dst, dport,
                loose: list[bytes]) -> PduRecord:
        """The PDU as the session analyser takes it: header fields, the parsed body and the stub."""
        client = self.ends.setdefault(stream_no, (src, sport) if ptype not in _SERVER_PTYPES else (dst, dport))
        from_client = (src, sport) == client
        flags = _int(pdu.get("dcerpc.cn_flags")) or 0
        frag_len = _int(pdu.get("dcerpc.cn_frag_len")) or 0
        auth_len = _int(pdu.get("dcerpc.cn_auth_len")) or 0
        little_endian = _int(_first(pdu, "dcerpc.drep.byteorder")) != 0
        hdr = Header(0, ptype, flags, little_endian, frag_len, auth_len, _int(pdu.get("dcerpc.cn_call_id")))
        auth = Body(b"", _int(_first(pdu, "dcerpc.auth_type")) or 0, _int(_first(pdu, "dcerpc.auth_level")) or 0)
        body, stub_len, clear, stub_missing, reason = auth, 0, False, None, None
        if ptype in (PTYPE_REQUEST, PTYPE_RESPONSE, PTYPE_FAULT):
            stub_len = _own_stub_len(pdu, ptype, flags, frag_len, auth_len)
            encrypted = auth.auth_level == AUTH_LEVEL_PKT_PRIVACY
            clear_stub = _first(pdu, "dcerpc.decrypted_stub_data") if encrypted and ptype != PTYPE_FAULT else None
            if clear_stub is not None:  # tshark unsealed it with --secrets
                auth.stub, clear = _hex_bytes(clear_stub), True
            elif encrypted:
                auth.stub = None
                if _first(pdu, "spnego.krb5.tok_id") is not None or auth.auth_type == AuthType.GSS_KERBEROS:
                    self.kerberos_conns.add(stream_no)
            elif ptype != PTYPE_FAULT:
                auth.stub = _stub_bytes(pdu, stub_len, loose)
                stub_missing = STUB_NOT_FROM_TSHARK
            # a response's opnum is tshark's own match, used only when the analyser saw no request
            body = CallPdu(_int(pdu.get("dcerpc.cn_alloc_hint")) or 0, _int(pdu.get("dcerpc.cn_ctx_id")),
                           _int(pdu.get("dcerpc.opnum")), None,
                           _int(pdu.get("dcerpc.cn_status")) if ptype == PTYPE_FAULT else None, auth)
        elif ptype in (PTYPE_BIND, PTYPE_ALTER_CONTEXT):
            body = BindPdu(_context_items(pdu), auth)
        elif ptype in (PTYPE_BIND_ACK, PTYPE_ALTER_CONTEXT_RESP):
            body = BindAckPdu(str(pdu.get("dcerpc.cn_sec_addr") or ""), _context_results(pdu), auth)
        elif ptype == PTYPE_BIND_NAK:
            reason = _int(_first(pdu, "dcerpc.cn_reject_reason"))
        return PduRecord(stream_no, from_client, frame, time, src, sport, dst, dport, hdr, body, stub_len, None,
                         clear, stub_missing, reason)

    def finish(self) -> list[Event]:
        self.session.finish()
        self.events.sort(key=lambda e: e.frame)  # stable: wire order within a frame is kept
        return self.events


# PTYPEs a server sends: a stream whose first PDU in the capture is one of these was joined after its start
_SERVER_PTYPES = frozenset((PTYPE_RESPONSE, PTYPE_FAULT, PTYPE_BIND_ACK, PTYPE_BIND_NAK, PTYPE_ALTER_CONTEXT_RESP))


# ---------------------------------------------------------------------------------------------- running pyshark


def _capture_info(path: str) -> tuple[CaptureInfo | None, CaptureError | None]:
    """CaptureInfo from the ingest reader (format, compression, size, frames, times, damage warnings with byte
    offsets), streamed in constant memory. When ingest cannot read the file (a format only tshark knows) the
    error is returned and the caller builds the info from what tshark reports."""
    from analyzer.ingest import open_capture

    try:
        cap = open_capture(path)
    except CaptureError as exc:
        return None, exc
    try:
        for _batch in cap.batches():
            pass
        return cap.info, None
    finally:
        cap.close()


def _run_pyshark(path: str, tshark: str, builder: _EventBuilder, progress) -> list[str]:
    """Iterate the capture with pyshark in the calling thread, on a fresh event loop that this function owns.
    ``progress(frames_done)`` every PROGRESS_EVERY frames. Returns warnings. Always closes the capture (and so its
    tshark process) and the loop."""
    import pyshark
    from pyshark.capture.capture import TSharkCrashException

    warnings: list[str] = []
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    previous_watcher = _use_pidfd_child_watcher(loop)
    capture = None
    try:
        capture = pyshark.FileCapture(path, use_json=True, tshark_path=tshark, eventloop=loop,
                                      custom_parameters=list(TSHARK_PARAMETERS))
        # pyshark runs `tshark -v` for every capture object: 0.81 s measured, as long as dissecting a 90-frame
        # capture. The version of a given tshark binary does not change within a process: ask once.
        capture._Capture__tshark_version = _tshark_version(tshark)
        reported = 0
        try:
            for pkt in capture:
                if builder.stop.is_set():
                    break
                builder.packet(pkt)
                if progress is not None and builder.frames - reported >= PROGRESS_EVERY:
                    progress(builder.frames)
                    reported = builder.frames
        except TSharkCrashException as exc:
            warnings.append(_stopped_message(capture, exc, builder.frames))
    finally:
        if capture is not None:
            try:
                capture.close()
            except TSharkCrashException as exc:
                # The exit status of a tshark that stopped on a cut file shows up (again) at close, before pyshark
                # forgets the process; the process has ended and been reaped, so forget it here, or pyshark's
                # __del__ tries to close it once more on a closed loop.
                capture._running_processes.clear()
                message = _stopped_message(capture, exc, builder.frames)
                if message not in warnings:
                    warnings.append(message)
        loop.run_until_complete(loop.shutdown_asyncgens())
        _restore_child_watcher(previous_watcher)
        asyncio.set_event_loop(None)
        loop.close()
    return warnings


# tshark's start-up banner when run as root, on stderr before any error. pyshark keeps only the last stderr line
# it has read, and when it has not read the real error yet, that line is the banner (seen on a cut pcap).
ROOT_BANNER = "Running as user"


def _stopped_message(capture, exc, frames: int) -> str:
    last = str(getattr(capture, "_last_error_line", None) or "").strip()
    if not last or last.startswith(ROOT_BANNER):
        # pyshark's own text ("TShark (pid N) seems to have crashed") would alarm; its exit status is the fact
        text = str(exc)
        status = text.split("retcode: ")[-1].split(")")[0] if "retcode: " in text else "?"
        last = f"tshark ended with exit status {status} before the end of the file"
    return f"tshark stopped after frame {frames}: {last} (events up to that frame are kept)"


@functools.lru_cache(maxsize=4)
def _tshark_version(tshark: str):
    from pyshark.tshark.tshark import get_tshark_version

    return get_tshark_version(tshark)


def _use_pidfd_child_watcher(loop):
    """Python 3.11 only (3.12 watches children per loop with pidfd by itself): asyncio's process-wide default
    ThreadedChildWatcher loses the race against subprocess.Popen.__del__ when pyshark runs outside the main
    thread: in one pass over the 8 public captures, 5 runs logged "Unknown child process pid N, will report
    returncode 255" and pyshark then raised TSharkCrashException at close for a tshark that had ended normally.
    (pyshark itself only fixes this for the main thread, with a SIGCHLD-based watcher.) A PidfdChildWatcher
    attached to our loop waits on the process's own pidfd instead: 0 failures in 15 runs (3 captures x 5). The watcher is
    process-wide in 3.11, so it is swapped in for the duration of the run (under _PYSHARK_LOCK) and the previous
    one restored."""
    if sys.version_info >= (3, 12) or not hasattr(asyncio, "PidfdChildWatcher"):
        return None
    with warnings_module.catch_warnings():
        warnings_module.simplefilter("ignore", DeprecationWarning)
        previous = asyncio.get_child_watcher()
        try:
            watcher = asyncio.PidfdChildWatcher()
            watcher.attach_loop(loop)
        except OSError:  # kernel without pidfd_open (< 5.3): keep the default and its rare race
            return None
        asyncio.set_child_watcher(watcher)
        return previous


def _restore_child_watcher(previous) -> None:
    if previous is None:
        return
    with warnings_module.catch_warnings():
        warnings_module.simplefilter("ignore", DeprecationWarning)
        asyncio.set_child_watcher(previous)




@contextlib.contextmanager
def _utf8_path(path: str):
    """``path``, or when its name is not valid UTF-8 (a file name in another encoding, given as bytes on the
    command line) a symlink to it with a plain name. pyshark decodes tshark's stderr as UTF-8, and tshark names
    the file in its messages: a byte such as 0xff killed pyshark's stderr reader with UnicodeDecodeError, whose
    traceback asyncio printed on our stderr."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        pass
    else:
        yield path
        return
    folder = tempfile.mkdtemp(prefix="mailpush-tshark-")
    link = os.path.join(folder, "capture")
    try:
        os.symlink(os.path.abspath(path), link)
        yield link
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def dissect_with_tshark(path, progress=None, secrets=None) -> tuple[list[Event], CaptureInfo]:
    """Events and capture info of ``path`` through tshark (pyshark). Same schema as the native engine.
    ``progress(bytes_done, bytes_total)`` as for the native engine (bytes estimated from frames done).
    ``secrets`` reach tshark through a private keytab (:mod:`analyzer.dissect.tshark_secrets`).

    Raises CaptureError (TsharkNotFound when tshark is missing) with a user-facing message; damage inside the
    file becomes warnings in ``info.warnings``. Safe to call from a thread that runs an asyncio loop (Jupyter):
    pyshark runs in a worker thread with its own loop.
    """
    path = os.fspath(path)
    tshark = shutil.which("tshark")
    if tshark is None:
        raise TsharkNotFound(TSHARK_NOT_FOUND)
    if not os.path.isfile(path):
        # Same words as the native reader. Only regular files: a FIFO would block tshark (and the ingest pass
        # before it) forever, and a device such as /dev/zero never ends.
        if os.path.isdir(path):
            raise CaptureError("is a directory, not a capture file")
        if os.path.exists(path):
            raise CaptureError("not a regular file (a FIFO, device or socket), not a capture file: save the "
                               "capture to a regular file first")
        raise CaptureError(f"cannot open {path}: no such file")
    info, ingest_error = _capture_info(path)

    builder = _EventBuilder()
    outcome: dict = {}
    size = os.path.getsize(path)
    frames_total = info.frames if info is not None else 0

    def frames_progress(frames_done: int) -> None:
        # The contract is progress(bytes_done, bytes_total) (as the ingest reader reports it); tshark does not
        # say where in the file it is, so bytes are estimated from the frame count the ingest pass found.
        if frames_total:
            progress(min(size, size * frames_done // frames_total), size)

    def work():
        try:
            with _utf8_path(path) as tshark_input, tshark_secrets_env(secrets):
                outcome["warnings"] = _run_pyshark(tshark_input, tshark, builder,
                                                   frames_progress if progress else None)
        except BaseException as exc:  # handed to the caller's thread below
            outcome["error"] = exc

    with _PYSHARK_LOCK:  # one run at a time per process: the child watcher swap is process-wide (3.11)
        worker = threading.Thread(target=work, name="mailpush-pyshark", daemon=True)
        worker.start()
        try:
            worker.join()
        except BaseException:  # Ctrl-C in the caller: stop reading so that the worker closes tshark, then go
            builder.stop.set()
            worker.join(timeout=10)
            raise
    if "error" in outcome:
        exc = outcome["error"]
        if ingest_error is not None:
            raise ingest_error from exc
        raise CaptureError(f"tshark could not read {path}: {type(exc).__name__}: {exc}") from exc
    if info is None:
        if builder.frames == 0:
            raise ingest_error
        info = CaptureInfo(path=path, format="other", compressed=False, size=os.path.getsize(path))
        info.frames, info.start, info.end = builder.frames, builder.first_time, builder.last_time
    for warning in outcome.get("warnings", []):
        info.warnings.append(warning)
        info.truncated = True
    if progress is not None:
        progress(size, size)
    events = builder.finish()
    info.warnings.extend(builder.warnings)
    if secrets:
        info.warnings.extend(undecrypted_warnings(events, builder.kerberos_conns))
    return events, info
