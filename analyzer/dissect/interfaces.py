"""The interface table: each DCE/RPC interface the analyzer knows (UUID, version, name) with its operations (opnum
-> name, request decoder, response decoder). Protocol facts as data, written once (docs/architecture.md, "Add an
opnum decoder").

``INTERFACES`` is the table; ``interface_name(uuid, ver_major, ver_minor)`` gives the short name the events table
uses (``EMSMDB``, ``AsyncEMSMDB``, ``NSPI``, ``EPM`` ... ; the lower-case UUID text when unknown);
``opname(interface, opnum)`` names an operation of a named interface, or returns None; ``operation(interface,
opnum)`` gives the whole :class:`Operation`.

Operation numbers and names are ``IntEnum`` classes whose member names are the specification's operation names
(what the ``opname`` column shows): :class:`~analyzer.dissect.emsmdb.EmsmdbOp` and
:class:`~analyzer.dissect.emsmdb.AsyncEmsmdbOp` live with their stub decoders in :mod:`analyzer.dissect.emsmdb`
(adding an EMSMDB decoder touches that file only), the others (no stub decoders) here. Code tests opnums through
these enums (``EmsmdbOp.EcRRegisterPushNotification``), never as bare numbers.

Names are keyed by UUID only: the version is reported separately (``interface_ver``) and the interfaces the
analyzer cares about exist in one version each. The one trap is the EMSMDB look-alike
``a4f1db00-ca47-1067-b31e-00dd010662da`` (one nibble differs, v1.0, OpenChange's ``exchange_store_admin1``): it
is deliberately a different name so that it can never be taken for EMSMDB.

Sources: MS-OXCRPC IDL (OfficeDev/Interop-TestSuites), MS-OXNSPI, MS-OXABREF, MS-RPCE/C706 for EPM, the
interface UUIDs published in the Windows protocol specifications (MS-NRPC, MS-LSAD, MS-SAMR, MS-DRSR, ...).
"""

from __future__ import annotations

from enum import IntEnum
from typing import Callable, NamedTuple

from analyzer.dissect.emsmdb import (  # noqa: F401  (re-exported: the interface names are part of the table)
    ASYNC_EMSMDB,
    ASYNC_EMSMDB_DECODERS,
    EMSMDB,
    EMSMDB_DECODERS,
    AsyncEmsmdbOp,
    EmsmdbOp,
)

NSPI = "NSPI"
EPM = "EPM"
RFR = "RFR"

# The interfaces of Outlook's MAPI traffic (the store, its async notifications, the address book): a connection
# carrying one of them is what the analysis is about (warnings about other connections are only counted)
MAPI_INTERFACES = frozenset({EMSMDB, ASYNC_EMSMDB, NSPI})

EMSMDB_UUID = "a4f1db00-ca47-1067-b31f-00dd010662da"
ASYNC_EMSMDB_UUID = "5261574a-4572-206e-b268-6b199213b4e4"
NSPI_UUID = "f5cc5a18-4264-101a-8c59-08002b2f8426"
EPM_UUID = "e1af8308-5d1f-11c9-91a4-08002b14a0fa"
RFR_UUID = "1544f5e0-613c-11d1-93df-00c04fd7bd09"

# Transfer syntaxes (bind contexts): NDR 2.0, NDR64, and the MS-RPCE bind-time feature negotiation prefix.
NDR_UUID = "8a885d04-1ceb-11c9-9fe8-08002b104860"
NDR64_UUID = "71710533-beba-4937-8319-b5dbef9ccc36"
BTFN_PREFIX = "6cb71c2c-9812-4540-"

# The endpoint mapper's well-known TCP port (ncacn_ip_tcp, C706 / MS-RPCE 2.1.1.1)
EPM_PORT = 135


class EpmOp(IntEnum):
    """Endpoint mapper operations (C706 Appendix O / MS-RPCE; the IDL's lower-case names)."""

    ept_insert = 0
    ept_delete = 1
    ept_lookup = 2
    ept_map = 3
    ept_lookup_handle_free = 4
    ept_inq_object = 5
    ept_mgmt_delete = 6


# Interfaces known by name only (no operations named): the public captures' other traffic
_NAMES: dict[str, str] = {
    "a4f1db00-ca47-1067-b31e-00dd010662da": "exchange_store_admin1",  # look-alike of EMSMDB, never EMSMDB
    "12345778-1234-abcd-ef00-0123456789ab": "LSARPC",
    "12345778-1234-abcd-ef00-0123456789ac": "SAMR",
    "12345678-1234-abcd-ef00-0123456789ab": "SPOOLSS",
    "3919286a-b10c-11d0-9ba8-00c04fd92ef5": "DSSETUP",
    "4b324fc8-1670-01d3-1278-5a47bf6ee188": "SRVSVC",
    "6bffd098-a112-3610-9833-46c3f87e345a": "WKSSVC",
    "338cd001-2244-31f1-aaaa-900038001003": "WINREG",
    "367abb81-9844-35f1-ad32-98f038001003": "SVCCTL",
    "86d35949-83c9-4044-b424-db363231fd0c": "ITaskSchedulerService",
    "1ff70682-0a51-30e8-076d-740be8cee98b": "ATSVC",
    "afa8bd80-7d8a-11c9-bef4-08002b102989": "MGMT",
    "99fcfec4-5260-101b-bbcb-00aa0021347a": "IOXIDResolver",
    "000001a0-0000-0000-c000-000000000046": "ISystemActivator",
    "4d9f4ab8-7d1c-11cf-861e-0020af6e7c57": "IRemoteActivation",
    "c681d488-d850-11d0-8c52-00c04fd90f7e": "EFSRPC",
    "df1941c5-fe89-4e79-bf10-463657acf44d": "EFSRPC",
    "b9785960-524f-11df-8b6d-83dcded72085": "GKDI",
    "76f03f96-cdfd-44fc-a22c-64950a001209": "IRemoteWinspool",
    "50abc2a4-574d-40b3-9d66-ee4fd5fba076": "DNSSERVER",
    "894de0c0-0d55-11d3-a322-00c04fa321a1": "InitShutdown",
    "d95afe70-a6d5-4259-822e-2c84da1ddb0d": "WindowsShutdown",
    "f6beaff7-1e19-4fbb-9f8f-b89e2018337c": "EVEN6",
    "82273fdc-e32a-18c3-3f78-827929dc23ea": "EVENTLOG",
    "0b6edbfa-4a24-4fc6-8a23-942b1eca65d1": "PAR",
    "e33c0cc4-0482-101a-bc0c-02608c6ba218": "RPCLOCATOR",
    "8d0ffe72-d252-11d0-bf8f-00c04fd9126b": "ICertPassage",
    "91ae6020-9e3c-11cf-8d7c-00aa00c091be": "ICertPassage2",
    "d049b186-814f-11d1-9a3c-00c04fc9b232": "NtFrsApi",
    "f5cc59b4-4264-101a-8c59-08002b2f8426": "FRSRPC",
}

class NspiOp(IntEnum):
    """MS-OXNSPI 3.1.4"""

    NspiBind = 0
    NspiUnbind = 1
    NspiUpdateStat = 2
    NspiQueryRows = 3
    NspiSeekEntries = 4
    NspiGetMatches = 5
    NspiResortRestriction = 6
    NspiDNToMId = 7
    NspiGetPropList = 8
    NspiGetProps = 9
    NspiCompareMIds = 10
    NspiModProps = 11
    NspiGetSpecialTable = 12
    NspiGetTemplateInfo = 13
    NspiModLinkAtt = 14
    NspiDeleteEntries = 15
    NspiQueryColumns = 16
    NspiGetNamesFromIDs = 17
    NspiGetIDsFromNames = 18
    NspiResolveNames = 19
    NspiResolveNamesW = 20


class RfrOp(IntEnum):
    """MS-OXABREF"""

    RfrGetNewDSA = 0
    RfrGetFQDNFromServerDN = 1


class NetlogonOp(IntEnum):
    """MS-NRPC, a few for readability of the public captures"""

    NetrLogonSamLogon = 2
    NetrLogonSamLogoff = 3
    NetrServerReqChallenge = 4
    NetrServerAuthenticate = 5
    NetrServerPasswordSet = 6
    NetrServerAuthenticate2 = 15
    NetrLogonGetCapabilities = 21
    NetrServerAuthenticate3 = 26
    NetrLogonGetDomainInfo = 29
    NetrServerPasswordSet2 = 30
    DsrGetDcNameEx2 = 34
    NetrLogonSamLogonEx = 39
    DsrEnumerateDomainTrusts = 40
    NetrLogonSamLogonWithFlags = 45


class DrsuapiOp(IntEnum):
    """MS-DRSR"""

    IDL_DRSBind = 0
    IDL_DRSUnbind = 1
    IDL_DRSReplicaSync = 2
    IDL_DRSGetNCChanges = 3
    IDL_DRSUpdateRefs = 4
    IDL_DRSCrackNames = 12
    IDL_DRSWriteSPN = 13
    IDL_DRSDomainControllerInfo = 16
    IDL_DRSAddEntry = 17


class Operation(NamedTuple):
    """One operation of an interface: its number, its name, and how its stubs are read (``(stub, little_endian)
    -> {Event field: value}``; None: not read)."""

    opnum: int
    name: str
    request: Callable[[bytes, bool], dict] | None = None
    response: Callable[[bytes, bool], dict] | None = None


class Interface(NamedTuple):
    """One interface: the name the events table shows, its UUID, its version (major, minor) and its operations."""

    name: str
    uuid: str
    version: tuple[int, int]
    operations: dict[int, Operation]


def _operations(ops: type[IntEnum], decoders: dict | None = None) -> dict[int, Operation]:
    decoders = decoders or {}
    return {op.value: Operation(op.value, op.name, *decoders.get(op, (None, None))) for op in ops}


INTERFACES: tuple[Interface, ...] = (
    Interface(EMSMDB, EMSMDB_UUID, (0, 81), _operations(EmsmdbOp, EMSMDB_DECODERS)),
    Interface(ASYNC_EMSMDB, ASYNC_EMSMDB_UUID, (0, 1), _operations(AsyncEmsmdbOp, ASYNC_EMSMDB_DECODERS)),
    Interface(NSPI, NSPI_UUID, (56, 0), _operations(NspiOp)),
    Interface(EPM, EPM_UUID, (3, 0), _operations(EpmOp)),
    Interface(RFR, RFR_UUID, (1, 0), _operations(RfrOp)),
    Interface("NETLOGON", "12345678-1234-abcd-ef00-01234567cffb", (1, 0), _operations(NetlogonOp)),
    Interface("DRSUAPI", "e3514235-4b06-11d1-ab04-00c04fc2dcd2", (4, 0), _operations(DrsuapiOp)),
)

_NAMES.update({i.uuid: i.name for i in INTERFACES})
_BY_NAME: dict[str, Interface] = {i.name: i for i in INTERFACES}
# name -> opnum -> operation name (opname is called once per PDU)
_OPS: dict[str, dict[int, str]] = {i.name: {n: op.name for n, op in i.operations.items()} for i in INTERFACES}


def interface_name(uuid: str, ver_major: int, ver_minor: int) -> str:
    """Short name of an interface (EMSMDB, AsyncEMSMDB, NSPI, EPM, RFR, NETLOGON, ...); the lower-case UUID
    text when the interface is not known. The version does not change the name (it is its own column)."""
    key = str(uuid).lower()
    return _NAMES.get(key, key)


def opname(interface: str, opnum: int) -> str | None:
    """Name of operation ``opnum`` of the interface called ``interface`` (as returned by
    :func:`interface_name`), or None when unknown."""
    if interface is None or opnum is None:
        return None
    ops = _OPS.get(interface)
    if ops is None:
        return None
    return ops.get(int(opnum))


def operation(interface: str, opnum: int) -> Operation | None:
    """The :class:`Operation` ``opnum`` of the interface called ``interface``, or None when unknown."""
    known = _BY_NAME.get(interface)
    return None if known is None or opnum is None else known.operations.get(int(opnum))


def is_transfer_syntax(uuid: str) -> bool:
    """True for NDR, NDR64 and bind-time feature negotiation pseudo syntaxes (never an interface)."""
    u = str(uuid).lower()
    return u in (NDR_UUID, NDR64_UUID) or u.startswith(BTFN_PREFIX)
