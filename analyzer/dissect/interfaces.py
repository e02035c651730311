"""DCE/RPC interface and operation names.

``interface_name(uuid, ver_major, ver_minor)`` gives the short name the events table uses (``EMSMDB``,
``AsyncEMSMDB``, ``NSPI``, ``EPM`` ... ; the lower-case UUID text when unknown). ``opname(interface, opnum)`` names
an operation of a named interface, or returns None.

Names are keyed by UUID only: the version is reported separately (``interface_ver``) and the interfaces the
analyzer cares about exist in one version each. The one trap is the EMSMDB look-alike
``a4f1db00-ca47-1067-b31e-00dd010662da`` (one nibble differs, v1.0, OpenChange's ``exchange_store_admin1``): it
is deliberately a different name so that it can never be taken for EMSMDB.

Sources: MS-OXCRPC IDL (OfficeDev/Interop-TestSuites), MS-OXNSPI, MS-OXABREF, MS-RPCE/C706 for EPM, the
interface UUIDs published in the Windows protocol specifications (MS-NRPC, MS-LSAD, MS-SAMR, MS-DRSR, ...).
"""

from __future__ import annotations

from enum import IntEnum

EMSMDB = "EMSMDB"
ASYNC_EMSMDB = "AsyncEMSMDB"
NSPI = "NSPI"
EPM = "EPM"
RFR = "RFR"

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
    """Endpoint mapper operations (C706 / MS-RPCE)."""

    EPT_INSERT = 0
    EPT_DELETE = 1
    EPT_LOOKUP = 2
    EPT_MAP = 3
    EPT_LOOKUP_HANDLE_FREE = 4
    EPT_INQ_OBJECT = 5
    EPT_MGMT_DELETE = 6


_NAMES: dict[str, str] = {
    EMSMDB_UUID: EMSMDB,
    ASYNC_EMSMDB_UUID: ASYNC_EMSMDB,
    NSPI_UUID: NSPI,
    EPM_UUID: EPM,
    RFR_UUID: RFR,
    "a4f1db00-ca47-1067-b31e-00dd010662da": "exchange_store_admin1",  # look-alike of EMSMDB, never EMSMDB
    "12345778-1234-abcd-ef00-0123456789ab": "LSARPC",
    "12345778-1234-abcd-ef00-0123456789ac": "SAMR",
    "12345678-1234-abcd-ef00-01234567cffb": "NETLOGON",
    "12345678-1234-abcd-ef00-0123456789ab": "SPOOLSS",
    "e3514235-4b06-11d1-ab04-00c04fc2dcd2": "DRSUAPI",
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

_EMSMDB_OPS = {
    0: "EcDoConnect",  # MS-OXCRPC: Opnum0NotUsedOnWire; legacy name as tshark prints it
    1: "EcDoDisconnect",
    2: "EcDoRpc",  # MS-OXCRPC: Opnum2NotUsedOnWire
    3: "EcGetMoreRpc",
    4: "EcRRegisterPushNotification",
    5: "EcRUnregisterPushNotification",
    6: "EcDummyRpc",
    7: "EcRGetDCName",
    8: "EcRNetGetDCName",
    9: "EcDoRpcExt",
    10: "EcDoConnectEx",
    11: "EcDoRpcExt2",
    14: "EcDoAsyncConnectEx",
}

_ASYNC_OPS = {0: "EcDoAsyncWaitEx"}

# MS-OXNSPI 3.1.4
_NSPI_OPS = {
    0: "NspiBind",
    1: "NspiUnbind",
    2: "NspiUpdateStat",
    3: "NspiQueryRows",
    4: "NspiSeekEntries",
    5: "NspiGetMatches",
    6: "NspiResortRestriction",
    7: "NspiDNToMId",
    8: "NspiGetPropList",
    9: "NspiGetProps",
    10: "NspiCompareMIds",
    11: "NspiModProps",
    12: "NspiGetSpecialTable",
    13: "NspiGetTemplateInfo",
    14: "NspiModLinkAtt",
    15: "NspiDeleteEntries",
    16: "NspiQueryColumns",
    17: "NspiGetNamesFromIDs",
    18: "NspiGetIDsFromNames",
    19: "NspiResolveNames",
    20: "NspiResolveNamesW",
}

# C706 / MS-RPCE endpoint mapper
_EPM_OPS = {
    0: "ept_insert",
    1: "ept_delete",
    2: "ept_lookup",
    3: "ept_map",
    4: "ept_lookup_handle_free",
    5: "ept_inq_object",
    6: "ept_mgmt_delete",
}

# MS-OXABREF
_RFR_OPS = {0: "RfrGetNewDSA", 1: "RfrGetFQDNFromServerDN"}

# MS-NRPC, a few for readability of the public captures
_NETLOGON_OPS = {
    2: "NetrLogonSamLogon",
    3: "NetrLogonSamLogoff",
    4: "NetrServerReqChallenge",
    5: "NetrServerAuthenticate",
    6: "NetrServerPasswordSet",
    15: "NetrServerAuthenticate2",
    21: "NetrLogonGetCapabilities",
    26: "NetrServerAuthenticate3",
    29: "NetrLogonGetDomainInfo",
    30: "NetrServerPasswordSet2",
    34: "DsrGetDcNameEx2",
    39: "NetrLogonSamLogonEx",
    40: "DsrEnumerateDomainTrusts",
    45: "NetrLogonSamLogonWithFlags",
}

# MS-DRSR
_DRSUAPI_OPS = {
    0: "IDL_DRSBind",
    1: "IDL_DRSUnbind",
    2: "IDL_DRSReplicaSync",
    3: "IDL_DRSGetNCChanges",
    4: "IDL_DRSUpdateRefs",
    12: "IDL_DRSCrackNames",
    13: "IDL_DRSWriteSPN",
    16: "IDL_DRSDomainControllerInfo",
    17: "IDL_DRSAddEntry",
}

_OPS: dict[str, dict[int, str]] = {
    EMSMDB: _EMSMDB_OPS,
    ASYNC_EMSMDB: _ASYNC_OPS,
    NSPI: _NSPI_OPS,
    EPM: _EPM_OPS,
    RFR: _RFR_OPS,
    "NETLOGON": _NETLOGON_OPS,
    "DRSUAPI": _DRSUAPI_OPS,
}


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


def is_transfer_syntax(uuid: str) -> bool:
    """True for NDR, NDR64 and bind-time feature negotiation pseudo syntaxes (never an interface)."""
    u = str(uuid).lower()
    return u in (NDR_UUID, NDR64_UUID) or u.startswith(BTFN_PREFIX)
