# SPDX-License-Identifier: GPL-2.0-or-later
"""Link layers of the native engine: where the IP packet starts in a captured frame.

Hand-written (a few byte reads) rather than scapy: scapy builds a full packet object per frame. Measured once
(scapy 2.8, 2-core machine shared with ~8 busy processes, process CPU time): ``Ether(raw)`` plus reading the TCP
port and IP source took 306 us/packet, ``ip_start`` + ``net.parse_ip`` 5.3 us/packet - ~60 times less. Only frames
the numpy pre-filter in :mod:`analyzer.dissect.transport` selects or could not classify come here.
"""

from __future__ import annotations

from analyzer.ingest.model import (
    LINKTYPE_ETHERNET,
    LINKTYPE_IPV4,
    LINKTYPE_IPV6,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_LOOP,
    LINKTYPE_NULL,
    LINKTYPE_RAW,
)

ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_IPV6 = 0x86DD
# 802.1Q customer tag, 802.1ad service tag (QinQ outer) and the pre-standard QinQ value some switches still send
VLAN_ETHERTYPES = frozenset((0x8100, 0x88A8, 0x9100))
MAX_VLAN_TAGS = 8  # more stacked tags than this is garbage, not a frame
# BSD loopback address families meaning IPv6: AF_INET6 is 24 on NetBSD/OpenBSD, 28 on FreeBSD, 30 on macOS
BSD_AF_INET = 2
BSD_AF_INET6 = frozenset((24, 28, 30))
# Other DLT values that mean raw IP on some platforms (DLT_RAW is 12 on most BSDs, 14 on OpenBSD)
RAW_IP_LINKTYPES = frozenset((LINKTYPE_RAW, 12, 14))

SUPPORTED_LINKTYPES = frozenset(
    (LINKTYPE_ETHERNET, LINKTYPE_NULL, LINKTYPE_LOOP, LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2, LINKTYPE_IPV4,
     LINKTYPE_IPV6) + tuple(RAW_IP_LINKTYPES)
)


def _ethertype_version(ethertype: int) -> int:
    if ethertype == ETHERTYPE_IPV4:
        return 4
    if ethertype == ETHERTYPE_IPV6:
        return 6
    return 0


def ip_start(linktype: int, data) -> tuple[int, int]:
    """(IP version 4 or 6, offset of the IP header) for one frame; version 0 when the frame carries no IP
    (ARP, LLDP, truncated link header, ...). ``linktype`` must be in :data:`SUPPORTED_LINKTYPES`."""
    n = len(data)
    if linktype == LINKTYPE_ETHERNET:
        if n < 14:
            return 0, 0
        pos = 12
        ethertype = data[12] << 8 | data[13]
        tags = 0
        while ethertype in VLAN_ETHERTYPES:
            tags += 1
            pos += 4
            if tags > MAX_VLAN_TAGS or n < pos + 2:
                return 0, 0
            ethertype = data[pos] << 8 | data[pos + 1]
        return _ethertype_version(ethertype), pos + 2
    if linktype in RAW_IP_LINKTYPES:
        return (data[0] >> 4 if n else 0), 0
    if linktype == LINKTYPE_IPV4:
        return 4, 0
    if linktype == LINKTYPE_IPV6:
        return 6, 0
    if linktype == LINKTYPE_LINUX_SLL:  # 16-byte cooked header, protocol (ethertype) in the last two bytes
        if n < 16:
            return 0, 0
        return _ethertype_version(data[14] << 8 | data[15]), 16
    if linktype == LINKTYPE_LINUX_SLL2:  # 20-byte cooked header v2, protocol first
        if n < 20:
            return 0, 0
        return _ethertype_version(data[0] << 8 | data[1]), 20
    if linktype in (LINKTYPE_NULL, LINKTYPE_LOOP):
        # NULL stores the family in the capturing host's byte order, LOOP in network order; the values are
        # small, so whichever end holds the non-zero byte tells the order.
        if n < 4:
            return 0, 0
        family = data[0] | data[1] << 8 if data[0] or data[1] else data[2] << 8 | data[3]
        if family == BSD_AF_INET:
            return 4, 4
        if family in BSD_AF_INET6:
            return 6, 4
        return 0, 0
    return 0, 0
