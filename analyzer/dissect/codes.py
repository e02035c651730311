# SPDX-License-Identifier: GPL-2.0-or-later
"""Protocol codes as data, written once: DCE/RPC flags and auth values, EMSMDB status codes, flags and ROP ids.

The interfaces and their operations are the other half of the protocol facts (:mod:`analyzer.dissect.interfaces`,
with the EMSMDB and AsyncEMSMDB operations in :mod:`analyzer.dissect.emsmdb`). Later stages import what they need
from here (the verdict stage names status codes with :data:`STATUS_NAMES`; correlate tests
:attr:`AsyncFlags.NotificationPending`) rather than re-declaring numbers.

Flags are :class:`enum.IntFlag` and codes :class:`enum.IntEnum`, so they compare equal to the plain integers in
events and parsed headers. The per-byte parsers (``dcerpc.py``) keep plain ``int`` copies of the values they test
per PDU (an IntFlag ``&`` builds a new enum member each time, about ten times the cost of an int ``&``).
"""

from __future__ import annotations

from enum import IntEnum, IntFlag

# ---------------------------------------------------------------------------------------------- DCE/RPC (C706, MS-RPCE)


class PType(IntEnum):
    """PTYPE of the connection-oriented PDU header (C706 12.6.4, MS-RPCE 2.2.2.1). Member names are the events'
    ``kind`` values."""

    request = 0
    response = 2
    fault = 3
    bind = 11
    bind_ack = 12
    bind_nak = 13
    alter_context = 14
    alter_context_resp = 15
    auth3 = 16
    shutdown = 17
    co_cancel = 18
    orphaned = 19
    rts = 20


class PfcFlags(IntFlag):
    """pfc_flags of the connection-oriented PDU header (C706 12.6.3.1, MS-RPCE 2.2.2.3)."""

    FIRST_FRAG = 0x01
    LAST_FRAG = 0x02
    PENDING_CANCEL = 0x04  # PFC_SUPPORT_HEADER_SIGN in bind / alter_context (MS-RPCE)
    CONC_MPX = 0x10
    DID_NOT_EXECUTE = 0x20
    MAYBE = 0x40
    OBJECT_UUID = 0x80


class AuthLevel(IntEnum):
    """auth_level of the sec_trailer (MS-RPCE 2.2.1.1.8); 0 in the events when the PDU has no auth trailer."""

    DEFAULT = 0
    NONE = 1
    CONNECT = 2
    CALL = 3
    PKT = 4
    PKT_INTEGRITY = 5
    PKT_PRIVACY = 6  # the stub is sealed


class AuthType(IntEnum):
    """auth_type of the sec_trailer (MS-RPCE 2.2.1.1.7)."""

    NONE = 0
    GSS_NEGOTIATE = 9  # SPNEGO: NTLMSSP or Kerberos inside
    WINNT = 10  # NTLMSSP
    GSS_SCHANNEL = 14
    GSS_KERBEROS = 16
    NETLOGON = 68


# ---------------------------------------------------------------------------------------------- EMSMDB (MS-OXCRPC)


class AsyncFlags(IntFlag):
    """pulFlagsOut of EcDoAsyncWaitEx (MS-OXCRPC 3.3.4.1)."""

    NotificationPending = 0x00000001


class RpcHeaderExtFlags(IntFlag):
    """RPC_HEADER_EXT.Flags of EcDoRpcExt2's rgbIn / rgbOut (MS-OXCRPC 2.2.2.1)."""

    Compressed = 0x0001
    XorMagic = 0x0002
    Last = 0x0004


class RopId(IntEnum):
    """The ROP ids the analyzer reads in ROP output buffers (MS-OXCROPS 2.2.14)."""

    RopNotify = 0x2A
    RopPending = 0x6E


def rop_id_text(rop: int) -> str:
    """A ROP id as the events' ``rop_ids`` column writes it: two lower-case hex digits ("2a")."""
    return f"{rop:02x}"


class Status(IntEnum):
    """Return values and fault codes the analyzer names (MS-OXCDATA 2.4, MS-RPCE 2.2.2.11 / C706 Appendix E,
    Win32 error codes). Values are the unsigned 32-bit codes."""

    success = 0x00000000
    access_denied = 0x00000005  # ERROR_ACCESS_DENIED
    ecExiting = 0x000003ED
    ecRpcFormat = 0x000004B6
    RPC_X_BAD_STUB_DATA = 0x000006F7
    ecRejected = 0x000007EE  # EcDoAsyncConnectEx of Exchange 2007: "poll or use push instead"
    ecNotEncrypted = 0x00000970
    nca_s_fault_context_mismatch = 0x1C00001A
    nca_s_op_rng_error = 0x1C010002
    ecNotSupported = 0x80040102
    ecRpcFailed = 0x80040115
    ecTooBig = 0x80040305
    ecInvalidParam = 0x80070057


# The names reports print (the verdict stage's status_text): the code's name, with the Win32 one spelt out
STATUS_NAMES: dict[int, str] = {s.value: ("access denied" if s is Status.access_denied else s.name) for s in Status}
