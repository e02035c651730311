# SPDX-License-Identifier: GPL-2.0-or-later
"""NTLMSSP-sealed DCE/RPC (packet privacy, MS-RPCE 2.2.2.11 + MS-NLMP 3.4): a self-contained decryptor.

:class:`SessionDecryptor` is fed the PDUs of connection-oriented DCE/RPC connections and keeps, per (connection,
auth_context_id), the NTLM handshake and the keys derived from it:

* ``auth_leg()`` for bind / bind_ack / alter_context / alter_context_resp / auth3: the NTLMSSP NEGOTIATE,
  CHALLENGE and AUTHENTICATE messages (bare, auth_type 10, or inside SPNEGO, auth_type 9). Kerberos (auth_type 16,
  or SPNEGO offering only Kerberos) is detected and named in a warning;
* ``unseal()`` for request / response PDUs at packet privacy: the clear stub, or a :class:`SealFailure` saying
  why not.

Key derivation follows MS-NLMP 3.3.1 (NTLMv1, with and without extended session security), 3.3.2 (NTLMv2) and
3.4.5 (KXKEY, SIGNKEY, SEALKEY, key exchange, 128/56/40-bit keys). The password is checked against the
AUTHENTICATE message before any stub is decrypted (NTProofStr for NTLMv2, the DES response for NTLMv1), so a wrong
password yields one warning naming the user and the connection instead of garbage. Each decrypted PDU's
signature is then verified (HMAC-MD5 with ESS, CRC32 without), which catches lost PDUs (the RC4 stream of a
direction cannot be resynchronised after one).

Cryptography comes from pycryptodome (MD4, MD5, HMAC, ARC4, DES); zlib gives CRC32.

NTLMv1 with an LM session key (NTLMSSP_NEGOTIATE_LM_KEY or REQUEST_NON_NT_SESSION_KEY, which no Windows since
Vista uses) needs the LM hash, so the password itself: a ``user::NTHASH`` secret gets a clear "not supported".
Anonymous sessions are not decrypted (nothing to decrypt with).
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field
from typing import Callable

from Crypto.Cipher import ARC4, DES
from Crypto.Hash import HMAC, MD4, MD5

from analyzer.dissect.secrets import Secrets

NTLMSSP_SIGNATURE = b"NTLMSSP\x00"

AUTH_TYPE_SPNEGO = 9
AUTH_TYPE_NTLMSSP = 10
AUTH_TYPE_SCHANNEL = 14
AUTH_TYPE_KERBEROS = 16
AUTH_TYPE_NETLOGON = 68
AUTH_TYPE_NAMES = {AUTH_TYPE_SPNEGO: "SPNEGO", AUTH_TYPE_NTLMSSP: "NTLMSSP", AUTH_TYPE_SCHANNEL: "Schannel",
                   AUTH_TYPE_KERBEROS: "Kerberos", AUTH_TYPE_NETLOGON: "Netlogon secure channel"}
AUTH_LEVEL_PKT_INTEGRITY = 5
AUTH_LEVEL_PKT_PRIVACY = 6

# Kerberos OIDs as DER (1.2.840.113554.1.2.2 and Microsoft's 1.2.840.48018.1.2.2) and the NTLMSSP OID
# (1.3.6.1.4.1.311.2.2.10), as they appear in SPNEGO mechTypes / supportedMech
_KRB5_OIDS = (bytes.fromhex("06092a864886f712010202"), bytes.fromhex("06092a864882f712010202"))
_NTLM_OID = bytes.fromhex("060a2b06010401823702020a")

# MS-NLMP 2.2.2.5 negotiate flags
NEGOTIATE_56 = 0x80000000
NEGOTIATE_KEY_EXCH = 0x40000000
NEGOTIATE_128 = 0x20000000
NEGOTIATE_VERSION = 0x02000000
NEGOTIATE_TARGET_INFO = 0x00800000
REQUEST_NON_NT_SESSION_KEY = 0x00400000
NEGOTIATE_IDENTIFY = 0x00100000
NEGOTIATE_EXTENDED_SESSIONSECURITY = 0x00080000
NEGOTIATE_ALWAYS_SIGN = 0x00008000
NEGOTIATE_ANONYMOUS = 0x00000800
NEGOTIATE_NTLM = 0x00000200
NEGOTIATE_LM_KEY = 0x00000080
NEGOTIATE_DATAGRAM = 0x00000040
NEGOTIATE_SEAL = 0x00000020
NEGOTIATE_SIGN = 0x00000010
NEGOTIATE_UNICODE = 0x00000001

_CLIENT_SIGN = b"session key to client-to-server signing key magic constant\x00"
_SERVER_SIGN = b"session key to server-to-client signing key magic constant\x00"
_CLIENT_SEAL = b"session key to client-to-server sealing key magic constant\x00"
_SERVER_SEAL = b"session key to server-to-client sealing key magic constant\x00"

SIGNATURE_LEN = 16
MAX_CONTEXTS = 4096  # security contexts remembered at once (connections close theirs)


# ---------------------------------------------------------------------------------------------------------------
# NTLMSSP messages (MS-NLMP 2.2.1)


@dataclass(slots=True)
class Challenge:
    flags: int
    server_challenge: bytes


@dataclass(slots=True)
class Authenticate:
    flags: int
    lm_response: bytes
    nt_response: bytes
    domain: str
    user: str
    workstation: str
    encrypted_session_key: bytes

    @property
    def account(self) -> str:
        return f"{self.domain}\\{self.user}" if self.domain else self.user


class NtlmMessageError(ValueError):
    pass


def _payload(msg: bytes, off: int) -> bytes:
    """A (len u16, maxlen u16, offset u32) security buffer's bytes."""
    if off + 8 > len(msg):
        raise NtlmMessageError("NTLMSSP message truncated")
    length, _max, start = struct.unpack_from("<HHI", msg, off)
    if length == 0:
        return b""
    if start + length > len(msg):
        raise NtlmMessageError("NTLMSSP field outside the message")
    return msg[start : start + length]


def _text(raw: bytes, unicode: bool) -> str:
    return raw.decode("utf-16-le", "replace") if unicode else raw.decode("latin-1")


def parse_message(msg: bytes) -> Challenge | Authenticate | int:
    """An NTLMSSP message starting at its signature: :class:`Challenge`, :class:`Authenticate`, or the message type
    (1 for NEGOTIATE) when nothing of it is needed."""
    if len(msg) < 12 or not msg.startswith(NTLMSSP_SIGNATURE):
        raise NtlmMessageError("no NTLMSSP signature")
    (mtype,) = struct.unpack_from("<I", msg, 8)
    if mtype == 2:
        if len(msg) < 32:
            raise NtlmMessageError("NTLMSSP CHALLENGE truncated")
        (flags,) = struct.unpack_from("<I", msg, 20)
        return Challenge(flags, bytes(msg[24:32]))
    if mtype == 3:
        if len(msg) < 64:
            raise NtlmMessageError("NTLMSSP AUTHENTICATE truncated")
        (flags,) = struct.unpack_from("<I", msg, 60)
        uni = bool(flags & NEGOTIATE_UNICODE)
        return Authenticate(flags, _payload(msg, 12), _payload(msg, 20), _text(_payload(msg, 28), uni),
                            _text(_payload(msg, 36), uni), _text(_payload(msg, 44), uni), _payload(msg, 52))
    return mtype


# ---------------------------------------------------------------------------------------------------------------
# Key derivation (MS-NLMP 3.3 and 3.4.5)


def _hmac_md5(key: bytes, data: bytes) -> bytes:
    return HMAC.new(key, data, digestmod=MD5).digest()


def _md5(data: bytes) -> bytes:
    return MD5.new(data).digest()


def _des_key(key7: bytes) -> bytes:
    """Spread 56 key bits over 8 bytes (the low bit of each byte is DES parity, ignored by DES)."""
    k = int.from_bytes(key7, "big")
    return bytes(((k >> (49 - 7 * i)) & 0x7F) << 1 for i in range(8))


def _desl(key16: bytes, data8: bytes) -> bytes:
    """DESL (MS-NLMP 6): three DES encryptions of ``data8`` under the 16-byte key padded to 21 bytes."""
    k = key16 + b"\x00" * 5
    return b"".join(DES.new(_des_key(k[i : i + 7]), DES.MODE_ECB).encrypt(data8) for i in (0, 7, 14))


@dataclass(slots=True)
class SessionKeys:
    """What sealing needs once the handshake is known and the password checked."""

    flags: int
    exported_session_key: bytes
    client_sign: bytes | None
    server_sign: bytes | None
    client_seal: bytes
    server_seal: bytes
    version: str  # "NTLMv2", "NTLMv1 with extended session security", "NTLMv1"


class WrongPassword(Exception):
    """The secret does not produce the AUTHENTICATE message's response. Carries no secret material."""


class Unsupported(Exception):
    pass


def lm_hash(password: str) -> bytes | None:
    """LMOWFv1 (MS-NLMP 3.3.1): the upper-cased OEM password, cut or padded to 14 bytes, as two DES keys
    encrypting "KGS!@#$%". None for a password that has no LM hash (over 14 characters or not OEM-encodable)."""
    try:
        oem = password.upper().encode("cp437")
    except UnicodeEncodeError:
        return None
    if len(oem) > 14:
        return None
    oem = oem.ljust(14, b"\0")
    return b"".join(DES.new(_des_key(oem[i : i + 7]), DES.MODE_ECB).encrypt(b"KGS!@#$%") for i in (0, 7))


def derive_keys(nt_hash: bytes, challenge: Challenge, auth: Authenticate,
                lm_owf: bytes | None = None) -> SessionKeys:
    """Check ``nt_hash`` against the AUTHENTICATE message and derive the session's keys. ``lm_owf`` (the LM
    hash) is needed only for NTLMv1 with an LM session key. Raises :class:`WrongPassword` or
    :class:`Unsupported`."""
    flags = auth.flags
    ess = bool(flags & NEGOTIATE_EXTENDED_SESSIONSECURITY)
    nt = auth.nt_response
    if len(nt) > 24:  # NTLMv2: NTProofStr (16) + the client's blob
        response_key = _hmac_md5(nt_hash, (auth.user.upper() + auth.domain).encode("utf-16-le"))
        proof = _hmac_md5(response_key, challenge.server_challenge + nt[16:])
        if proof != nt[:16]:
            raise WrongPassword()
        key_exchange_key = _hmac_md5(response_key, proof)  # SessionBaseKey = KXKEY for NTLMv2
        version = "NTLMv2"
    elif len(nt) == 24:  # NTLMv1
        if ess:
            client_challenge = auth.lm_response[:8]
            expected = _desl(nt_hash, _md5(challenge.server_challenge + client_challenge)[:8])
        else:
            expected = _desl(nt_hash, challenge.server_challenge)
        if expected != nt:
            raise WrongPassword()
        session_base_key = MD4.new(nt_hash).digest()
        if ess:
            key_exchange_key = _hmac_md5(session_base_key, challenge.server_challenge + auth.lm_response[:8])
            version = "NTLMv1 with extended session security"
        elif flags & (NEGOTIATE_LM_KEY | REQUEST_NON_NT_SESSION_KEY):
            if lm_owf is None:
                raise Unsupported("NTLMv1 with an LM session key, which needs the password itself (not an NT "
                                  "hash; at most 14 characters)")
            if flags & NEGOTIATE_LM_KEY:  # MS-NLMP 3.4.5.1
                lm8 = auth.lm_response[:8]
                key_exchange_key = (DES.new(_des_key(lm_owf[:7]), DES.MODE_ECB).encrypt(lm8)
                                    + DES.new(_des_key(lm_owf[7:8] + b"\xbd" * 6), DES.MODE_ECB).encrypt(lm8))
            else:
                key_exchange_key = lm_owf[:8] + b"\0" * 8
            version = "NTLMv1 with an LM session key"
        else:
            key_exchange_key = session_base_key
            version = "NTLMv1"
    elif not nt:
        raise Unsupported("anonymous NTLM session (no NT response): nothing to decrypt with")
    else:
        raise Unsupported(f"NT response of {len(nt)} bytes")
    if flags & NEGOTIATE_KEY_EXCH and auth.encrypted_session_key:
        if len(auth.encrypted_session_key) != 16:
            raise Unsupported("encrypted random session key is not 16 bytes")
        exported = ARC4.new(key_exchange_key).decrypt(auth.encrypted_session_key)
    else:
        exported = key_exchange_key
    if ess:
        if flags & NEGOTIATE_128:
            base = exported
        elif flags & NEGOTIATE_56:
            base = exported[:7]
        else:
            base = exported[:5]
        return SessionKeys(flags, exported, _md5(exported + _CLIENT_SIGN), _md5(exported + _SERVER_SIGN),
                           _md5(base + _CLIENT_SEAL), _md5(base + _SERVER_SEAL), version)
    if flags & (NEGOTIATE_LM_KEY | NEGOTIATE_DATAGRAM):
        seal = exported[:7] + b"\xa0" if flags & NEGOTIATE_56 else exported[:5] + b"\xe5\x38\xb0"
    else:
        seal = exported
    return SessionKeys(flags, exported, None, None, seal, seal, version)


# ---------------------------------------------------------------------------------------------------------------
# Sealing state of one security context


class _Sealer:
    """RC4 states and sequence numbers of one established context (MS-NLMP 3.4.3, 3.4.4). With extended session
    security each direction has its own key, RC4 stream and sequence number; without it both directions share one
    RC4 stream and one sequence number, in wire order."""

    def __init__(self, keys: SessionKeys):
        self.keys = keys
        self.ess = bool(keys.flags & NEGOTIATE_EXTENDED_SESSIONSECURITY)
        self.key_exch = bool(keys.flags & NEGOTIATE_KEY_EXCH)
        if self.ess:
            self.rc4 = {True: ARC4.new(keys.client_seal), False: ARC4.new(keys.server_seal)}
            self.seq = {True: 0, False: 0}
            self.started = {True: False, False: False}
        else:
            shared = ARC4.new(keys.client_seal)
            self.rc4 = {True: shared, False: shared}
            self._shared_seq = [0]
        self.broken: dict[bool, str] = {}

    def _next_seq(self, from_client: bool) -> int:
        if self.ess:
            n = self.seq[from_client]
            self.seq[from_client] = n + 1
        else:
            n = self._shared_seq[0]
            self._shared_seq[0] = n + 1
        return n

    def unseal(self, from_client: bool, sealed: bytes, signature: bytes,
               signed_variants: Callable[[bytes], tuple[bytes, ...]]) -> tuple[bytes, bool]:
        """Decrypt ``sealed`` and check ``signature`` against one of the ``signed_variants(clear)`` (with and without
        header signing). Returns (clear, signature_ok)."""
        if self.ess and not self.started[from_client]:
            return self._first_unseal(from_client, sealed, signature, signed_variants)
        rc4 = self.rc4[from_client]
        clear = rc4.decrypt(sealed)
        return clear, self._verify(from_client, rc4, signature, signed_variants(clear))

    def _first_unseal(self, from_client: bool, sealed: bytes, signature: bytes, signed_variants):
        """The first sealed PDU of a direction. Under SPNEGO (auth_type 9) each side sends an NTLM-signed
        mechListMIC after the handshake, which takes 8 bytes of its RC4 stream and one sequence number; Windows
        then resets the RC4 states, and the sequence numbers too when the AUTHENTICATE carried a MIC (MS-SPNG
        3.3.5.1; Samba's ntlmssp_sign_reset). Which of these happened does not show in the capture, so the fresh
        stream and the stream after one MIC checksum are both tried, with the sequence number the signature
        carries in clear."""
        self.started[from_client] = True
        key = self.keys.client_seal if from_client else self.keys.server_seal
        (wire_seq,) = struct.unpack_from("<I", signature, 12) if len(signature) >= SIGNATURE_LEN else (0,)
        clear = b""
        for skip in (0, 8) if wire_seq <= 1 else (0,):
            rc4 = ARC4.new(key)
            if skip:
                rc4.decrypt(b"\0" * skip)
            clear = rc4.decrypt(sealed)
            self.seq[from_client] = wire_seq
            if self._verify(from_client, rc4, signature, signed_variants(clear)):
                self.rc4[from_client] = rc4
                return clear, True
        return clear, False

    def _verify(self, from_client: bool, rc4, signature: bytes, variants: tuple[bytes, ...]) -> bool:
        seq = self._next_seq(from_client)
        if len(signature) < SIGNATURE_LEN:
            return False
        if self.ess:
            checksum = signature[4:12]
            if self.key_exch:
                checksum = rc4.decrypt(checksum)
            (wire_seq,) = struct.unpack_from("<I", signature, 12)
            if wire_seq != seq:
                return False
            sign_key = self.keys.client_sign if from_client else self.keys.server_sign
            seq_bytes = struct.pack("<I", seq)
            return any(_hmac_md5(sign_key, seq_bytes + data)[:8] == checksum for data in variants)
        plain = rc4.decrypt(signature[4:16])  # random pad, CRC32, sequence number
        _pad, crc, wire_seq = struct.unpack("<III", plain)
        if wire_seq != seq:
            return False
        return any(zlib.crc32(data) == crc for data in variants)


# ---------------------------------------------------------------------------------------------------------------
# The decryptor


@dataclass(slots=True)
class SealFailure:
    """Why a sealed PDU stays encrypted (safe to show: never holds secret material)."""

    reason: str


@dataclass(slots=True)
class Unsealed:
    stub: bytes  # the clear stub with the auth padding removed
    account: str
    signature_ok: bool


@dataclass
class _Context:
    conn: int
    ctx_id: int
    flow: str
    mech: str = "NTLMSSP"
    challenge: Challenge | None = None
    auth: Authenticate | None = None
    sealer: _Sealer | None = None
    failure: str | None = None  # set once: every later PDU of the context reports it
    warned: set = field(default_factory=set)


@dataclass(slots=True)
class AuthTrailer:
    auth_type: int
    auth_level: int
    pad: int
    ctx_id: int
    start: int  # offset of the sec_trailer in the PDU
    token: bytes


def read_trailer(pdu: bytes, frag_len: int, auth_len: int, little_endian: bool) -> AuthTrailer | None:
    start = frag_len - auth_len - 8
    if auth_len == 0 or start < 16 or frag_len > len(pdu):
        return None
    auth_type, level, pad = pdu[start], pdu[start + 1], pdu[start + 2]
    (ctx_id,) = struct.unpack_from("<I" if little_endian else ">I", pdu, start + 4)
    return AuthTrailer(auth_type, level, pad, ctx_id, start, bytes(pdu[start + 8 : frag_len]))


def _mechanism(auth_type: int, token: bytes) -> str:
    """NTLMSSP, Kerberos, or another mechanism's name."""
    if auth_type == AUTH_TYPE_NTLMSSP:
        return "NTLMSSP"
    if auth_type == AUTH_TYPE_SPNEGO:
        if NTLMSSP_SIGNATURE in token:
            return "NTLMSSP"
        krb = min((i for i in (token.find(o) for o in _KRB5_OIDS) if i >= 0), default=-1)
        ntlm = token.find(_NTLM_OID)
        if krb >= 0 and (ntlm < 0 or krb < ntlm):  # the first mechanism offered / the one selected
            return "Kerberos"
        if ntlm >= 0:
            return "NTLMSSP"
        return "SPNEGO"
    return AUTH_TYPE_NAMES.get(auth_type, f"auth type {auth_type}")


class SessionDecryptor:
    """Decrypts NTLMSSP-sealed stubs with the accounts of ``secrets``. ``warn`` receives one message per problem
    and context (wrong password, no secret for the user, Kerberos, lost PDU); messages name the account and the
    connection, never a secret."""

    def __init__(self, secrets: Secrets, warn: Callable[[str], None]):
        self._secrets = secrets
        self._warn = warn
        self._contexts: dict[tuple[int, int], _Context] = {}
        self._conn_warned: set[tuple[int, str]] = set()

    # -- handshake

    def auth_leg(self, conn: int, from_client: bool, pdu: bytes, frag_len: int, auth_len: int,
                 little_endian: bool, flow: str) -> None:
        """A bind, bind_ack, alter_context, alter_context_resp or auth3 PDU with an auth verifier."""
        tr = read_trailer(pdu, frag_len, auth_len, little_endian)
        if tr is None:
            return
        mech = _mechanism(tr.auth_type, tr.token)
        key = (conn, tr.ctx_id)
        ctx = self._contexts.get(key)
        if mech != "NTLMSSP":
            if tr.auth_level >= AUTH_LEVEL_PKT_INTEGRITY and mech != "SPNEGO":
                ctx = self._new(key, flow)
                ctx.mech, ctx.failure = mech, _not_ntlm_reason(mech)
            return
        i = tr.token.find(NTLMSSP_SIGNATURE)
        if i < 0:
            return  # a SPNEGO leg without an NTLM message (e.g. the final accept-completed)
        try:
            msg = parse_message(tr.token[i:])
        except NtlmMessageError as exc:
            self._context_warning(ctx or self._new(key, flow), f"NTLMSSP token not readable ({exc})")
            return
        if msg == 1 or ctx is None:
            ctx = self._new(key, flow)  # a NEGOTIATE starts a new security context (also a re-bind)
        if isinstance(msg, Challenge):
            ctx.challenge = msg
        elif isinstance(msg, Authenticate):
            ctx.auth = msg
            self._establish(ctx)

    def _new(self, key, flow: str) -> _Context:
        if len(self._contexts) >= MAX_CONTEXTS:  # bounded memory on hostile input: forget the oldest
            del self._contexts[next(iter(self._contexts))]
        ctx = self._contexts[key] = _Context(key[0], key[1], flow)
        return ctx

    def _establish(self, ctx: _Context) -> None:
        auth, challenge = ctx.auth, ctx.challenge
        where = f"{ctx.flow}, security context {ctx.ctx_id}"
        if challenge is None:
            ctx.failure = "NTLMSSP CHALLENGE not in the capture: keys cannot be derived"
            self._warn(f"{where}: {ctx.failure}; the session stays encrypted")
            return
        if not auth.user and not auth.nt_response:
            ctx.failure = "anonymous NTLM session: nothing to decrypt with"
            self._warn(f"{where}: {ctx.failure}")
            return
        candidates = self._secrets.for_user(auth.user, auth.domain)
        if not candidates:
            ctx.failure = f"no secret for {auth.account}"
            self._warn(f"{where}: sealed with NTLMSSP by {auth.account}, but the secrets file has no entry for "
                       "that account; the session stays encrypted")
            return
        unsupported = None
        for secret in candidates:
            try:
                keys = derive_keys(secret.nt_hash, challenge, auth,
                                   lm_hash(secret.password) if secret.password is not None else None)
            except WrongPassword:
                continue
            except Unsupported as exc:
                unsupported = str(exc)
                continue
            ctx.sealer = _Sealer(keys)
            return
        if unsupported:
            ctx.failure = f"{unsupported}: not supported"
            self._warn(f"{where}: sealed with NTLMSSP by {auth.account}: {ctx.failure}; the session stays encrypted")
            return
        ctx.failure = f"wrong password for {auth.account}"
        self._warn(f"{where}: wrong password or NT hash for {auth.account} in the secrets file (the NTLM response "
                   "does not match it); the session stays encrypted")

    def _context_warning(self, ctx: _Context, message: str) -> None:
        if message not in ctx.warned:
            ctx.warned.add(message)
            self._warn(f"{ctx.flow}, security context {ctx.ctx_id}: {message}")

    # -- sealed PDUs

    def unseal(self, conn: int, from_client: bool, pdu: bytes, frag_len: int, auth_len: int, little_endian: bool,
               body_start: int, flow: str) -> Unsealed | SealFailure:
        """A request or response PDU at packet privacy: ``pdu[body_start : sec_trailer]`` is the sealed stub with
        its auth padding."""
        tr = read_trailer(pdu, frag_len, auth_len, little_endian)
        if tr is None or tr.start < body_start:
            return SealFailure("auth verifier not readable")
        ctx = self._contexts.get((conn, tr.ctx_id))
        if ctx is None:
            mech = _verifier_mechanism(tr.auth_type, tr.token)
            if mech == "NTLMSSP":
                reason = "the NTLMSSP handshake of this session is not in the capture: keys unknown"
            elif mech == "SPNEGO":
                reason = "the SPNEGO handshake of this session is not in the capture: mechanism and keys unknown"
            else:
                reason = _not_ntlm_reason(mech)
            if (conn, reason) not in self._conn_warned:
                self._conn_warned.add((conn, reason))
                self._warn(f"{flow}: {reason}; the session stays encrypted")
            return SealFailure(reason)
        if ctx.failure is not None:
            if ctx.mech != "NTLMSSP":
                self._context_warning(ctx, f"{ctx.failure}; the session stays encrypted")
            return SealFailure(ctx.failure)
        if ctx.sealer is None:
            ctx.failure = "the NTLMSSP AUTHENTICATE message of this session is not in the capture"
            self._context_warning(ctx, f"{ctx.failure}; the session stays encrypted")
            return SealFailure(ctx.failure)
        sealer = ctx.sealer
        if from_client in sealer.broken:
            return SealFailure(sealer.broken[from_client])
        sealed = pdu[body_start : tr.start]
        signature = tr.token

        def signed(clear: bytes) -> tuple[bytes, ...]:
            # header signing (MS-RPCE 2.2.2.11 / 3.3.1.5.2.2): header + clear body + padding + sec_trailer;
            # without it: the body and padding only
            whole = bytes(pdu[:body_start]) + clear + bytes(pdu[tr.start : tr.start + 8])
            return whole, clear

        clear, ok = sealer.unseal(from_client, bytes(sealed), signature, signed)
        account = ctx.auth.account
        if not ok:
            reason = ("signature does not verify (a PDU of this direction is missing from the capture, or the "
                      "decryption is wrong): this and later PDUs of the direction stay encrypted")
            sealer.broken[from_client] = reason
            self._context_warning(ctx, f"{'client' if from_client else 'server'} PDU of {account}: {reason}")
            return SealFailure(reason)
        pad = tr.pad if tr.pad <= len(clear) else 0
        return Unsealed(clear[: len(clear) - pad], account, True)

    def close(self, conn: int) -> None:
        for key in [k for k in self._contexts if k[0] == conn]:
            del self._contexts[key]


def _verifier_mechanism(auth_type: int, verifier: bytes) -> str:
    """The mechanism of a request/response verifier when the handshake is not in the capture. SPNEGO hides it in
    the auth_type, but the tokens differ: an NTLM signature is 16 bytes starting with version 1; Kerberos sends
    an RFC 4121 Wrap/MIC token (TOK_ID 05 04 / 04 04) or an RFC 1964 one framed as ASN.1 (0x60)."""
    if auth_type == AUTH_TYPE_SPNEGO:
        if len(verifier) == SIGNATURE_LEN and verifier.startswith(b"\x01\x00\x00\x00"):
            return "NTLMSSP"
        if verifier[:2] in (b"\x05\x04", b"\x04\x04") or verifier[:1] == b"\x60":
            return "Kerberos"
        return "SPNEGO"
    return _mechanism(auth_type, b"")


def _not_ntlm_reason(mech: str) -> str:
    if mech == "Kerberos":
        return "sealed with Kerberos: decryption needs a keytab"
    return f"sealed with {mech}: not decryptable by mailpush"
