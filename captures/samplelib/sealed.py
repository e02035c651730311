# SPDX-License-Identifier: GPL-2.0-or-later
"""Real NTLMSSP sealing for the generated captures (used by generate.py for the ``sealed_*`` samples).

:class:`NtlmSealer` plays both ends of one NTLM security context with a known password: it writes the NEGOTIATE,
CHALLENGE and AUTHENTICATE tokens (NTLMv2, or NTLMv1 with or without extended session security) and seals
DCE/RPC request/response PDUs exactly as Windows does at packet privacy (MS-NLMP 3.4.3 / MS-RPCE 2.2.2.11): the
stub and its auth padding are RC4-encrypted with the direction's sealing key, the 16-byte verifier signs the
whole PDU (header signing). It is written from MS-NLMP on its own (not with mailpush's decryptor) so that tshark,
decrypting the files with the password, is the independent check. Cryptography: pycryptodome.

Deterministic: every random value (challenges, the exported session key, the timestamp) comes from the ``rng``
the capture uses.
"""

from __future__ import annotations

import struct
import zlib

from Crypto.Cipher import ARC4, DES
from Crypto.Hash import HMAC, MD4, MD5

from analyzer.dissect.layouts import HEADER_LENGTHS, REQUEST_HEADER, SEC_TRAILER


# Windows 10 client / server flags, as in the public sealed captures (auth level 6)
FLAGS_V2 = 0xE2888235  # 56 KEY_EXCH 128 VERSION TARGET_INFO ESS ALWAYS_SIGN NTLM SEAL SIGN REQUEST_TARGET UNICODE
FLAGS_V1_ESS = 0xE2088235  # the same without TARGET_INFO
FLAGS_V1 = 0xE2008235  # NTLMv1 without extended session security
ESS = 0x00080000
NEG_128 = 0x20000000
NEG_56 = 0x80000000
KEY_EXCH = 0x40000000
LM_KEY = 0x00000080
VERSION_BYTES = bytes.fromhex("0a00614a0000000f")  # 10.0.19041, NTLM revision 15


def _hmac_md5(key, data):
    return HMAC.new(key, data, digestmod=MD5).digest()


def _des7(key7, data8):
    k = int.from_bytes(key7, "big")
    key8 = bytes((((k >> (49 - 7 * i)) & 0x7F) << 1) for i in range(8))
    return DES.new(key8, DES.MODE_ECB).encrypt(data8)


def _desl(key16, data8):
    k = key16 + b"\x00" * 5
    return _des7(k[0:7], data8) + _des7(k[7:14], data8) + _des7(k[14:21], data8)


def _sec_buffers(offset, items):
    fields, payload = [], b""
    for item in items:
        fields.append(struct.pack("<HHI", len(item), len(item), offset + len(payload)))
        payload += item
    return b"".join(fields), payload


class NtlmSealer:
    """``version``: "v2", "v1-ess" or "v1". ``flags`` overrides the version's negotiate flags (e.g. without
    NEGOTIATE_128 for 56-bit keys, without 56 too for 40-bit ones)."""

    def __init__(self, rng, user, domain, password, version="v2", workstation="WS01", flags=None):
        self.rng = rng
        self.user, self.domain, self.workstation = user, domain, workstation
        self.password = password
        self.nt_hash = MD4.new(password.encode("utf-16-le")).digest()
        self.version = version
        self.flags = flags if flags is not None else {"v2": FLAGS_V2, "v1-ess": FLAGS_V1_ESS, "v1": FLAGS_V1}[version]
        self.server_challenge = self._random(8)
        self.target_info = self._av_pairs()
        self._rc4 = None

    def _random(self, n):
        return bytes(self.rng.randrange(256) for _ in range(n))

    def _lm_owf(self):
        upper = self.password.upper().encode("ascii").ljust(14, b"\0")
        return _des7(upper[:7], b"KGS!@#$%") + _des7(upper[7:14], b"KGS!@#$%")

    def _av_pairs(self):
        def av(av_id, value):
            return struct.pack("<HH", av_id, len(value)) + value
        dom = self.domain.encode("utf-16-le")
        dns = (self.domain.lower() + ".example").encode("utf-16-le")
        return (av(2, dom) + av(1, "EX01".encode("utf-16-le")) + av(4, dns)
                + av(7, struct.pack("<Q", 133_000_000_000_000_000 + self.rng.randrange(10**9))) + av(0, b""))

    # -- handshake tokens

    def negotiate(self):
        return b"NTLMSSP\x00" + struct.pack("<II", 1, self.flags) + b"\x00" * 16 + VERSION_BYTES

    def challenge(self):
        target = self.domain.encode("utf-16-le")
        info = self.target_info if self.version == "v2" else b""
        off = 56
        return (b"NTLMSSP\x00" + struct.pack("<I", 2) + struct.pack("<HHI", len(target), len(target), off)
                + struct.pack("<I", self.flags | 0x00020000) + self.server_challenge + b"\x00" * 8
                + struct.pack("<HHI", len(info), len(info), off + len(target)) + VERSION_BYTES + target + info)

    def authenticate(self):
        """The AUTHENTICATE token; derives the session's keys as a side effect."""
        client_challenge = self._random(8)
        sc = self.server_challenge
        if self.version == "v2":
            key = _hmac_md5(self.nt_hash, (self.user.upper() + self.domain).encode("utf-16-le"))
            temp = (b"\x01\x01" + b"\x00" * 6 + struct.pack("<Q", 133_000_000_000_000_000) + client_challenge
                    + b"\x00" * 4 + self.target_info + b"\x00" * 4)
            proof = _hmac_md5(key, sc + temp)
            nt = proof + temp
            lm = _hmac_md5(key, sc + client_challenge) + client_challenge
            kx_key = _hmac_md5(key, proof)
        elif self.version == "v1-ess":
            lm = client_challenge + b"\x00" * 16
            nt = _desl(self.nt_hash, MD5.new(sc + client_challenge).digest()[:8])
            kx_key = _hmac_md5(MD4.new(self.nt_hash).digest(), sc + client_challenge)
        else:
            nt = _desl(self.nt_hash, sc)
            if self.flags & LM_KEY:  # MS-NLMP 3.3.1 LM response and 3.4.5.1 KXKEY from the LM hash
                lm_owf = self._lm_owf()
                lm = _desl(lm_owf, sc)
                kx_key = _des7(lm_owf[:7], lm[:8]) + _des7(lm_owf[7:8] + b"\xbd" * 6, lm[:8])
            else:
                lm = nt  # Windows sends the NT response twice when there is no LM hash
                kx_key = MD4.new(self.nt_hash).digest()
        if self.flags & KEY_EXCH:  # a random session key, sent under the key exchange key
            exported = self._random(16)
            encrypted_key = ARC4.new(kx_key).encrypt(exported)
        else:
            exported, encrypted_key = kx_key, b""
        self._derive(exported)
        items = [lm, nt, self.domain.encode("utf-16-le"), self.user.encode("utf-16-le"),
                 self.workstation.encode("utf-16-le"), encrypted_key]
        fields, payload = _sec_buffers(88, items)
        return (b"NTLMSSP\x00" + struct.pack("<I", 3) + fields + struct.pack("<I", self.flags) + VERSION_BYTES
                + b"\x00" * 16 + payload)

    def _derive(self, exported):
        md5 = lambda d: MD5.new(d).digest()  # noqa: E731
        if self.flags & ESS:
            self.sign = {True: md5(exported + b"session key to client-to-server signing key magic constant\x00"),
                         False: md5(exported + b"session key to server-to-client signing key magic constant\x00")}
            # MS-NLMP 3.4.5.3: the sealing key is weakened to 56 or 40 bits before hashing when 128 is not negotiated
            base = exported if self.flags & NEG_128 else exported[:7] if self.flags & NEG_56 else exported[:5]
            seal = {True: md5(base + b"session key to client-to-server sealing key magic constant\x00"),
                    False: md5(base + b"session key to server-to-client sealing key magic constant\x00")}
            self._rc4 = {True: ARC4.new(seal[True]), False: ARC4.new(seal[False])}
            self._seq = {True: 0, False: 0}
        else:  # one RC4 stream and one sequence number for both directions
            # without LM_KEY the whole exported key seals (MS-NLMP 3.4.5.3, last branch), whatever 128/56 say
            key = exported
            if self.flags & LM_KEY:
                key = exported[:7] + b"\xa0" if self.flags & NEG_56 else exported[:5] + b"\xe5\x38\xb0"
            shared = ARC4.new(key)
            self._rc4 = {True: shared, False: shared}
            self._seq = [0]

    # -- packet privacy

    def seal(self, pdu: bytes, from_client: bool) -> bytes:
        """``pdu``: a request/response built with the clear stub and a 16-byte placeholder verifier. Returns it
        sealed: stub and padding encrypted, verifier = the NTLM signature of the whole PDU (header signing)."""
        frag_len, auth_len, _call_id = HEADER_LENGTHS.le.unpack_from(pdu, HEADER_LENGTHS.offset)
        assert auth_len == 16 and frag_len == len(pdu)
        trailer = frag_len - auth_len - SEC_TRAILER.size
        body_start = REQUEST_HEADER.end  # the stub of a request or response
        clear = pdu[body_start:trailer]
        signed = pdu[:trailer + SEC_TRAILER.size]
        rc4 = self._rc4[from_client]
        if self.flags & ESS:
            seq = self._seq[from_client]
            self._seq[from_client] += 1
            sealed = rc4.encrypt(clear)
            checksum = _hmac_md5(self.sign[from_client], struct.pack("<I", seq) + signed)[:8]
            if self.flags & KEY_EXCH:
                checksum = rc4.encrypt(checksum)
            verifier = struct.pack("<I", 1) + checksum + struct.pack("<I", seq)
        else:
            seq = self._seq[0]
            self._seq[0] += 1
            sealed = rc4.encrypt(clear)
            verifier = struct.pack("<I", 1) + rc4.encrypt(struct.pack("<III", 0, zlib.crc32(signed), seq))
        return pdu[:body_start] + sealed + pdu[trailer:trailer + SEC_TRAILER.size] + verifier
