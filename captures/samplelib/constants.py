# SPDX-License-Identifier: GPL-2.0-or-later
"""Protocol and site constants of the samples (docs/protocol.md)."""

from __future__ import annotations


EMSMDB_UUID = "a4f1db00-ca47-1067-b31f-00dd010662da"  # v0.81
ASYNC_EMSMDB_UUID = "5261574a-4572-206e-b268-6b199213b4e4"  # v0.01
NSPI_UUID = "f5cc5a18-4264-101a-8c59-08002b2f8426"  # v56.0
EPM_UUID = "e1af8308-5d1f-11c9-91a4-08002b14a0fa"  # v3.0
OXABREF_UUID = "1544f5e0-613c-11d1-93df-00c04fd7bd09"  # v1.0, Exchange address-book referral
NDR_UUID = "8a885d04-1ceb-11c9-9fe8-08002b104860"  # v2
BTFN_UUID = "6cb71c2c-9812-4540-0300-000000000000"  # bind-time feature negotiation, bitmask 3

EMSMDB = (EMSMDB_UUID, 0, 81)
ASYNC_EMSMDB = (ASYNC_EMSMDB_UUID, 0, 1)
NSPI = (NSPI_UUID, 56, 0)
EPM = (EPM_UUID, 3, 0)
OXABREF = (OXABREF_UUID, 1, 0)

PT_REQUEST, PT_RESPONSE, PT_FAULT = 0, 2, 3
PT_BIND, PT_BIND_ACK, PT_ALTER, PT_ALTER_RESP, PT_AUTH3 = 11, 12, 14, 15, 16
KIND = {PT_REQUEST: "request", PT_RESPONSE: "response", PT_FAULT: "fault", PT_BIND: "bind",
        PT_BIND_ACK: "bind_ack", PT_ALTER: "alter_context", PT_ALTER_RESP: "alter_context_resp", PT_AUTH3: "auth3"}
# PDUs the manifest lists (the set the events table must reproduce, issue 2)
LISTED_KINDS = {"bind", "alter_context", "request", "response"}

EC_NOT_SUPPORTED = 0x80040102
NCA_S_OP_RNG_ERROR = 0x1C010002
AUTH_NTLMSSP = 10
AUTH_LEVEL_PRIVACY = 6

EXCHANGE = "10.0.0.10"
EXCHANGE_PORT = 49155  # dynamic EMSMDB endpoint learned through the endpoint mapper
DN = "/o=Contoso/ou=First Administrative Group/cn=Recipients/cn=%s"
EPOCH_BASE = 1772442000  # 2026-03-02 09:00:00 UTC; each scenario starts at its own offset from here
