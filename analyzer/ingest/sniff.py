"""Recognise a capture format from the first bytes of a file, never from its name.

Real-world NetMon files are called ``.cap``, and so are libpcap files written by many tools, so the extension
says nothing. Each format starts with a fixed magic number:

===========  =====================================================  ==========
format       magic (first 4 bytes on disk)                          notes
===========  =====================================================  ==========
pcap         ``d4 c3 b2 a1`` / ``a1 b2 c3 d4``                      µs, little / big endian
pcap         ``4d 3c b2 a1`` / ``a1 b2 3c 4d``                      ns, little / big endian
pcap         ``34 cd b2 a1`` / ``a1 b2 cd 34``                      Kuznetzov "modified" pcap (24-byte records)
pcapng       ``0a 0d 0d 0a`` + byte-order magic ``1a2b3c4d`` at 8   Section Header Block
netmon1      ``RTSS``                                               Network Monitor 1.x
netmon2      ``GMBU``                                               Network Monitor 2.x (and 3.x/Message Analyzer)
gzip         ``1f 8b``                                              any of the above, compressed
===========  =====================================================  ==========
"""

from __future__ import annotations

GZIP_MAGIC = b"\x1f\x8b"

# pcap magic as read little-endian -> (byte order of the file, fraction units per second, record header size)
PCAP_MAGICS = {
    0xA1B2C3D4: 1_000_000,
    0xA1B23C4D: 1_000_000_000,
    0xA1B2CD34: 1_000_000,  # Alexey Kuznetzov's patched libpcap: 8 extra bytes per record header
}
PCAPNG_SHB = b"\x0a\x0d\x0d\x0a"
PCAPNG_BOM_LE = b"\x4d\x3c\x2b\x1a"
PCAPNG_BOM_BE = b"\x1a\x2b\x3c\x4d"

# How many leading bytes sniffing needs (pcapng's byte-order magic sits at offset 8).
SNIFF_BYTES = 12


def is_gzip(head: bytes) -> bool:
    return head[:2] == GZIP_MAGIC


def sniff_format(head: bytes) -> str | None:
    """The format name (one of ``FORMATS``) of a file starting with ``head``, or None if it is none of them.

    ``head`` is the decompressed start of the file; give at least :data:`SNIFF_BYTES` bytes when available.
    """
    if len(head) < 4:
        return None
    magic4 = head[:4]
    if magic4 == b"RTSS":
        return "netmon1"
    if magic4 == b"GMBU":
        return "netmon2"
    if magic4 == PCAPNG_SHB:
        # The SHB type is a palindrome, so also check the byte-order magic; without it this is just text
        # starting with "\n\r\r\n" (a short file still counts, so that it reports as truncated pcapng).
        bom = head[8:12]
        if len(head) < 12 or bom in (PCAPNG_BOM_LE, PCAPNG_BOM_BE):
            return "pcapng"
        return None
    le = int.from_bytes(magic4, "little")
    be = int.from_bytes(magic4, "big")
    if le in PCAP_MAGICS or be in PCAP_MAGICS:
        return "pcap"
    return None
