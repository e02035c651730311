# SPDX-License-Identifier: GPL-2.0-or-later
"""IPv4 / IPv6 (with extension headers) and the ICMP errors that quote a UDP datagram, for one frame.

Hand-written for speed (see :mod:`analyzer.dissect.link`): only frames the numpy pre-filter selects or could not
classify come here, but on a capture that is all IPv6 or VLAN-tagged that is every frame.
"""

from __future__ import annotations

import socket

PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_UDP = 17
PROTO_ICMPV6 = 58
# IPv6 extension headers walked to reach the transport header (RFC 8200 4.1); AH (51) has its own length unit.
IPV6_EXT_HOP_BY_HOP = 0
IPV6_EXT_ROUTING = 43
IPV6_EXT_FRAGMENT = 44
IPV6_EXT_AH = 51
IPV6_EXT_DEST_OPTS = 60
IPV6_EXT_MOBILITY = 135
IPV6_NO_NEXT = 59
_IPV6_EXT_GENERIC = frozenset((IPV6_EXT_HOP_BY_HOP, IPV6_EXT_ROUTING, IPV6_EXT_DEST_OPTS, IPV6_EXT_MOBILITY))
MAX_IPV6_EXT_HEADERS = 16

ICMP_DEST_UNREACHABLE = 3
ICMPV6_DEST_UNREACHABLE = 1

# parse results
IP_OK = 0
IP_MALFORMED = 1
IP_LATER_FRAGMENT = 2  # not the first fragment: no transport header in it

_ntop = socket.inet_ntop
_AF_INET, _AF_INET6 = socket.AF_INET, socket.AF_INET6


def ipv4_text(raw) -> str:
    return _ntop(_AF_INET, bytes(raw))


def ipv6_text(raw) -> str:
    return _ntop(_AF_INET6, bytes(raw))


def parse_ip(data, off: int, version: int, quoted: bool = False):
    """Parse the IP header at ``data[off:]``.

    Returns ``(status, src, dst, proto, l4_offset, l4_end)``; ``l4_end`` honours the IP length (Ethernet pads
    short frames), capped by what was captured. ``quoted``: the header is inside an ICMP error, whose copy of
    the datagram is normally cut short, so the IP length is not checked against the bytes present.
    """
    n = len(data)
    if version == 4:
        if n < off + 20 or data[off] >> 4 != 4:
            return IP_MALFORMED, None, None, 0, 0, 0
        ihl = (data[off] & 0x0F) * 4
        total = data[off + 2] << 8 | data[off + 3]
        if ihl < 20 or n < off + ihl or (total < ihl and not quoted):
            return IP_MALFORMED, None, None, 0, 0, 0
        src = _ntop(_AF_INET, bytes(data[off + 12 : off + 16]))
        dst = _ntop(_AF_INET, bytes(data[off + 16 : off + 20]))
        frag_offset = (data[off + 6] & 0x1F) << 8 | data[off + 7]
        end = n if quoted else min(n, off + total)
        if frag_offset:
            return IP_LATER_FRAGMENT, src, dst, data[off + 9], off + ihl, end
        return IP_OK, src, dst, data[off + 9], off + ihl, end
    if version == 6:
        if n < off + 40 or data[off] >> 4 != 6:
            return IP_MALFORMED, None, None, 0, 0, 0
        payload_len = data[off + 4] << 8 | data[off + 5]
        src = _ntop(_AF_INET6, bytes(data[off + 8 : off + 24]))
        dst = _ntop(_AF_INET6, bytes(data[off + 24 : off + 40]))
        # payload length 0 with a hop-by-hop header is a jumbogram: take what was captured
        end = n if (quoted or payload_len == 0) else min(n, off + 40 + payload_len)
        nxt, pos = data[off + 6], off + 40
        for _ in range(MAX_IPV6_EXT_HEADERS):
            if nxt in _IPV6_EXT_GENERIC:
                if end < pos + 8:
                    return IP_MALFORMED, src, dst, 0, 0, 0
                nxt, pos = data[pos], pos + (data[pos + 1] + 1) * 8
            elif nxt == IPV6_EXT_FRAGMENT:
                if end < pos + 8:
                    return IP_MALFORMED, src, dst, 0, 0, 0
                frag_offset = (data[pos + 2] << 8 | data[pos + 3]) >> 3
                nxt, pos = data[pos], pos + 8
                if frag_offset:
                    return IP_LATER_FRAGMENT, src, dst, nxt, pos, end
            elif nxt == IPV6_EXT_AH:
                if end < pos + 8:
                    return IP_MALFORMED, src, dst, 0, 0, 0
                nxt, pos = data[pos], pos + (data[pos + 1] + 2) * 4
            else:
                break
        else:
            return IP_MALFORMED, src, dst, 0, 0, 0
        if pos > end:
            return IP_MALFORMED, src, dst, 0, 0, 0
        return IP_OK, src, dst, nxt, pos, end
    return IP_MALFORMED, None, None, 0, 0, 0


def quoted_udp(data, off: int, version: int):
    """The datagram an ICMP error quotes, at ``data[off:]``: ``(src, dst, sport, dport)`` when it is UDP with
    at least its ports present, else None."""
    status, src, dst, proto, l4, _end = parse_ip(data, off, version, quoted=True)
    if status != IP_OK or proto != PROTO_UDP or len(data) < l4 + 4:
        return None
    return src, dst, data[l4] << 8 | data[l4 + 1], data[l4 + 2] << 8 | data[l4 + 3]
