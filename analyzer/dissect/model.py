"""Typed output of the dissect stage: protocol events.

One :class:`Event` per DCE/RPC connection-oriented PDU as tshark lists them (after TCP reassembly; fragments
included: a fragmented call's decoded fields and reassembled ``stub_len`` are on its LAST fragment's row), per
candidate notification UDP datagram, and per ICMP/ICMPv6 error that quotes a UDP datagram. Events say what was on the wire; they carry no judgement (that is the verdict stage's job).

Events table schema (``events_dataframe``; column -> pandas dtype; ``<NA>``/None where not applicable)::

    frame            int64    frame at which the PDU became complete (Wireshark's number: 1-based, file order)
    time             float64  epoch seconds of that frame
    src, dst         string   IP addresses of the packet (IPv6 compressed form)
    sport, dport     Int64    ports (TCP or UDP); <NA> for ICMP rows
    conn             Int64    TCP connection index in order of first appearance (like tcp.stream); <NA> for UDP/ICMP
    kind             string   bind, bind_ack, bind_nak, alter_context, alter_context_resp, request, response, fault,
                              auth3, shutdown, co_cancel, orphaned, rts, udp, icmp_unreachable
    interface        string   EMSMDB, AsyncEMSMDB, NSPI, EPM, ... (name, or the UUID when unknown); binds: the first
                              abstract syntax offered; requests/responses/faults: the interface of ctx_id
    interface_uuid   string   lower-case UUID text
    interface_ver    string   "major.minor", e.g. "0.81"
    interface_source string   (the LAST column of the table) how the interface was learnt (None when no interface), in order of trust:
                              bind / alter_context: the context was negotiated on this connection in the capture;
                              endpoint: the same context was bound later on this connection, or on another
                              connection to the same server address and TCP port (bind, alter_context, bind_ack
                              secondary address; port 135 = EPM); epm: an ept_map answer mapped the interface to
                              this server address and port (context 0); stub_shape: EMSMDB recognised by the shape
                              of the connection's stubs (rule in analyzer.dissect.session.EmsmdbShape). Learning is
                              capture-wide: a PDU before the frame that taught its endpoint is labelled too.
    opnum            Int64    requests; responses and faults get the opnum of their request (matched by call_id)
    opname           string   e.g. EcRRegisterPushNotification, EcDoConnectEx, EcDoRpcExt2, EcDoAsyncWaitEx, ept_map
    ctx_id           Int64    presentation context id (requests, responses, faults)
    call_id          Int64
    auth_level       Int64    0 none, 2 connect, ..., 5 pkt_integrity, 6 pkt_privacy
    encrypted        bool     stub hidden by packet privacy (opnum/call_id still known)
    stub_len         Int64    clear-text stub size (alloc_hint when encrypted); UDP: payload length
    request_frame    Int64    responses/faults: frame of the matching request
    callback         string   opnum 4 request: "ip:port" or "[ipv6]:port"
    context_hex      string   opnum 4 request: rgbContext as lower-case hex; udp rows: payload hex (first 64 bytes)
    advise_bits      Int64    opnum 4 request: grbitAdviseBits
    status           Int64    return value where decoded (opnum 4, 10, 14 responses, AsyncEMSMDB 0), fault status
    hnotification    Int64    opnum 4 response
    poll_max_ms      Int64    EcDoConnect / EcDoConnectEx response pcmsPollsMax
    user_dn          string   EcDoConnect / EcDoConnectEx request szUserDN
    async_flags      Int64    EcDoAsyncWaitEx response pulFlagsOut (1 = NotificationPending)
    rop_ids          string   EcDoRpc/EcDoRpcExt2 response: ROP ids readable at the start of the ROP buffer,
                              comma-separated hex ("2a,6e"); "" when empty, <NA> when not readable
    icmp_type        Int64    icmp rows
    icmp_code        Int64    icmp rows (ICMPv4 13 = administratively prohibited; ICMPv6 type 1 code 1 likewise)
    quoted_src, quoted_dst       string  icmp rows: addresses of the quoted UDP datagram
    quoted_sport, quoted_dport   Int64   icmp rows: its ports
    note             string   free text: decode warnings for this PDU
    decrypted        bool     the stub was sealed (packet privacy) and decrypted with --secrets: every field reads
                              as on a plain session, ``encrypted`` is False

UDP rows are emitted only for datagrams that can be a push notification: both ports >= 1024 and not
connectionless DCE/RPC (version 4, PTYPE <= 10, >= 80 bytes). DNS, NetBIOS, SNMP etc. never appear.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from analyzer.dissect.codes import PType

EVENT_KINDS = (
    "bind",
    "bind_ack",
    "bind_nak",
    "alter_context",
    "alter_context_resp",
    "request",
    "response",
    "fault",
    "auth3",
    "shutdown",
    "co_cancel",
    "orphaned",
    "rts",
    "udp",
    "icmp_unreachable",
)

# Values of the interface_source column, in order of trust
INTERFACE_SOURCES = ("bind", "alter_context", "endpoint", "epm", "stub_shape")

# DCE/RPC connection-oriented PTYPE -> event kind
PTYPE_KIND = {ptype.value: ptype.name for ptype in PType}


@dataclass(slots=True)
class Event:
    frame: int
    time: float
    src: str
    dst: str
    sport: int | None
    dport: int | None
    kind: str
    conn: int | None = None
    interface: str | None = None
    interface_uuid: str | None = None
    interface_ver: str | None = None
    opnum: int | None = None
    opname: str | None = None
    ctx_id: int | None = None
    call_id: int | None = None
    auth_level: int = 0
    encrypted: bool = False
    stub_len: int | None = None
    request_frame: int | None = None
    callback: str | None = None
    context_hex: str | None = None
    advise_bits: int | None = None
    status: int | None = None
    hnotification: int | None = None
    poll_max_ms: int | None = None
    user_dn: str | None = None
    async_flags: int | None = None
    rop_ids: str | None = None
    icmp_type: int | None = None
    icmp_code: int | None = None
    quoted_src: str | None = None
    quoted_dst: str | None = None
    quoted_sport: int | None = None
    quoted_dport: int | None = None
    note: str | None = None
    decrypted: bool = False
    interface_source: str | None = None  # added by issue 9: the last column, so earlier positions do not move


EVENT_COLUMNS: dict[str, str] = {
    "frame": "int64",
    "time": "float64",
    "src": "string",
    "dst": "string",
    "sport": "Int64",
    "dport": "Int64",
    "kind": "string",
    "conn": "Int64",
    "interface": "string",
    "interface_uuid": "string",
    "interface_ver": "string",
    "opnum": "Int64",
    "opname": "string",
    "ctx_id": "Int64",
    "call_id": "Int64",
    "auth_level": "Int64",
    "encrypted": "bool",
    "stub_len": "Int64",
    "request_frame": "Int64",
    "callback": "string",
    "context_hex": "string",
    "advise_bits": "Int64",
    "status": "Int64",
    "hnotification": "Int64",
    "poll_max_ms": "Int64",
    "user_dn": "string",
    "async_flags": "Int64",
    "rop_ids": "string",
    "icmp_type": "Int64",
    "icmp_code": "Int64",
    "quoted_src": "string",
    "quoted_dst": "string",
    "quoted_sport": "Int64",
    "quoted_dport": "Int64",
    "note": "string",
    "decrypted": "bool",
    "interface_source": "string",
}

assert tuple(EVENT_COLUMNS) == tuple(f.name for f in fields(Event)) or set(EVENT_COLUMNS) == {
    f.name for f in fields(Event)
}


class ConnectionWarning(str):
    """A dissection warning about one TCP connection: the text (it IS the warning string, so every consumer of
    ``CaptureInfo.warnings`` keeps working) plus which connection it concerns. Dissection says nothing more;
    later stages may annotate it (``mapi``: the connection carries EMSMDB/AsyncEMSMDB/NSPI traffic; ``affects``:
    its client's address) to group the warnings for the reader.

    Attributes: ``conn`` (connection index, as the events' ``conn``), ``client`` and ``server`` ("ip:port"),
    ``capture_loss`` (True for bytes missing from the capture), ``mapi`` and ``affects`` (None until annotated).
    """

    def __new__(cls, text: str, conn: int, client: str, server: str, capture_loss: bool = False):
        self = super().__new__(cls, text)
        self.conn, self.client, self.server, self.capture_loss = conn, client, server, capture_loss
        self.mapi = None
        self.affects = None
        return self

    def __reduce__(self):  # pickling (batch workers) keeps the structure
        return (ConnectionWarning, (str(self), self.conn, self.client, self.server, self.capture_loss),
                self.__dict__)


# The Python types a column may hold for the fast table writers (event_columns); anything else (a str subclass, a
# numpy scalar, an int in a float column) sends the caller to the pandas conversion, which decides what it means.
_COLUMN_TYPES = {
    "int64": frozenset({int}),
    "Int64": frozenset({int, type(None)}),
    "float64": frozenset({float}),
    "string": frozenset({str, type(None)}),
    "bool": frozenset({bool}),
}


def event_columns(events) -> dict[str, list] | None:
    """The events table as plain Python columns: ``EVENT_COLUMNS`` in order, rows sorted by (frame, original
    order), None where the table has <NA>. None when a cell holds a type other than its column's plain Python
    type (then only the pandas conversion of :func:`events_to_dataframe` says what the cell becomes).

    The CSV and parquet writers of ``mailpush events`` build on this instead of a DataFrame: on big.pcap (25,977
    events) importing pandas and building the DataFrame took 0.5-0.6 s, these columns 0.08-0.13 s (most of it the
    960,000 attribute reads)."""
    from operator import attrgetter

    frames = list(map(attrgetter("frame"), events))
    if any(a > b for a, b in zip(frames, frames[1:])):
        order = sorted(range(len(frames)), key=frames.__getitem__)  # stable, like sort_values(kind="stable")
        events = [events[i] for i in order]
    columns = {}
    for name, dtype in EVENT_COLUMNS.items():
        column = list(map(attrgetter(name), events))
        if not set(map(type, column)) <= _COLUMN_TYPES[dtype]:
            return None
        columns[name] = column
    return columns


def event_arrow_arrays(columns: dict[str, list]) -> list | None:
    """pyarrow arrays of :func:`event_columns` in ``EVENT_COLUMNS`` order, typed as pandas stores the documented
    dtypes (int64, double with NaN as null, large_string for ``string``, bool); None when a value does not fit
    (an integer beyond 64 bits, text that is not valid Unicode): the pandas conversion then says what happens.

    Assembled from numpy buffers with ``Array.from_buffers``: ``pa.array`` imports pandas on its first call
    (pyarrow's pandas shim looks for Series), 0.25-0.35 s that `events --format parquet` does not need."""
    from itertools import repeat
    from operator import is_not

    import numpy as np
    import pyarrow as pa

    arrays = []
    for name, dtype in EVENT_COLUMNS.items():
        values = columns[name]
        n = len(values)
        nulls = values.count(None)
        valid = None
        try:
            if nulls == n and n:
                valid = np.zeros(n, dtype=bool)
                arrow_type = pa.large_string() if dtype == "string" else pa.int64()
                buffers = [pa.py_buffer(np.zeros(n + 1 if dtype == "string" else n, dtype=np.int64))]
                if dtype == "string":
                    buffers.append(pa.py_buffer(b""))
            elif dtype == "Int64" and nulls:
                # None -> NaN in C, then back to int64: exact while every value is below 2**53 (checked)
                numbers = np.array(values, dtype=np.float64)
                valid = ~np.isnan(numbers)
                if np.abs(numbers[valid]).max() >= 2**53:
                    numbers = np.array([0 if v is None else v for v in values], dtype=np.int64)
                numbers = np.where(valid, numbers, 0).astype(np.int64)
                arrow_type, buffers = pa.int64(), [pa.py_buffer(numbers)]
            elif dtype == "string":
                if nulls:
                    valid = np.fromiter(map(is_not, values, repeat(None)), dtype=bool, count=n)
                text = ["" if v is None else v for v in values] if nulls else values
                joined = "".join(text)
                if joined.isascii():  # one character, one byte: the lengths are the offsets' steps
                    lengths, data = map(len, text), joined.encode("ascii")
                else:
                    encoded = [v.encode("utf-8") for v in text]
                    lengths, data = map(len, encoded), b"".join(encoded)
                offsets = np.zeros(n + 1, dtype=np.int64)
                np.cumsum(np.fromiter(lengths, dtype=np.int64, count=n), out=offsets[1:])
                arrow_type, buffers = pa.large_string(), [pa.py_buffer(offsets), pa.py_buffer(data)]
            elif dtype == "float64":
                numbers = np.array(values, dtype=np.float64)
                valid = ~np.isnan(numbers)  # NaN -> null, as Table.from_pandas (to_parquet) does
                nulls = n - int(np.count_nonzero(valid))
                arrow_type, buffers = pa.float64(), [pa.py_buffer(numbers)]
            elif dtype == "bool":
                bits = np.packbits(np.array(values, dtype=bool), bitorder="little")
                arrow_type, buffers = pa.bool_(), [pa.py_buffer(bits)]
            else:  # int64, Int64 without <NA>
                numbers = np.array(values, dtype=np.int64)
                arrow_type, buffers = pa.int64(), [pa.py_buffer(numbers)]
        except (OverflowError, UnicodeEncodeError):
            return None
        bitmap = pa.py_buffer(np.packbits(valid, bitorder="little")) if nulls else None
        arrays.append(pa.Array.from_buffers(arrow_type, n, [bitmap, *buffers], null_count=nulls))
    return arrays


def events_to_dataframe(events):
    """List of :class:`Event` -> DataFrame with exactly ``EVENT_COLUMNS`` (in that order and with those dtypes),
    sorted by (frame, original order)."""
    import pandas as pd

    columns = event_columns(events)
    arrays = event_arrow_arrays(columns) if columns is not None else None
    if arrays is not None:
        # typed columns through pyarrow into their dtypes (the conversion pandas itself uses for Int64 and string
        # columns read from arrow): 0.04-0.08 s on big.pcap, against 0.20-0.35 s for from_records of 25,977
        # object tuples then astype, and 0.14-0.22 s for pd.array per column
        data = {}
        for (name, dtype), array in zip(EVENT_COLUMNS.items(), arrays):
            if dtype in ("Int64", "string"):
                data[name] = pd.api.types.pandas_dtype(dtype).__from_arrow__(array)
            else:
                data[name] = array.to_numpy(zero_copy_only=False)
        return pd.DataFrame(data)
    names = list(EVENT_COLUMNS)
    rows = [tuple(getattr(e, n) for n in names) for e in events]
    df = pd.DataFrame.from_records(rows, columns=names)
    df = df.astype(EVENT_COLUMNS)
    if len(df):
        df = df.sort_values("frame", kind="stable").reset_index(drop=True)
    return df


def dataframe_to_events(df) -> list[Event]:
    """Inverse of :func:`events_to_dataframe` (pandas NA -> None)."""
    import pandas as pd

    out = []
    names = list(EVENT_COLUMNS)
    for rec in df[names].itertuples(index=False, name=None):
        vals = [None if (v is pd.NA or (isinstance(v, float) and v != v and n != "time")) else v for n, v in zip(names, rec)]
        kw = dict(zip(names, vals))
        for k in ("frame", "sport", "dport", "conn", "opnum", "ctx_id", "call_id", "auth_level", "stub_len",
                  "request_frame", "advise_bits", "status", "hnotification", "poll_max_ms", "async_flags",
                  "icmp_type", "icmp_code", "quoted_sport", "quoted_dport"):
            if kw[k] is not None:
                kw[k] = int(kw[k])
        kw["time"] = float(kw["time"])
        kw["encrypted"] = bool(kw["encrypted"])
        kw["decrypted"] = bool(kw["decrypted"])
        if kw["auth_level"] is None:
            kw["auth_level"] = 0
        out.append(Event(**kw))
    return out
