# SPDX-License-Identifier: GPL-2.0-or-later
"""Handing ``--secrets`` to tshark without putting them on its command line.

tshark's NTLMSSP dissector takes one password in the preference ``ntlmssp.nt_password``; given as ``-o`` it would
show in the process list. It also tries every RC4-HMAC key (encryption type 23, which *is* the NT hash) of the
Kerberos keytab named by ``kerberos.file`` when ``kerberos.decrypt`` is on ("NTLMv2 authenticated using keytab
principal ..." in its expert info; checked with tshark 4.0.17). So each secret becomes one keytab entry, which
also covers ``user::NTHASH`` lines and any number of accounts, and tshark reads both files from a private
configuration directory named by the environment variable ``WIRESHARK_CONFIG_DIR`` (its personal preferences are
then not read; the engine passes every option it needs explicitly anyway).

The directory is created mode 0700 under the system temporary directory, holds NT hashes only (never a
password), and is removed when tshark is done.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import struct
import tempfile
from typing import TYPE_CHECKING

from analyzer.dissect.interfaces import ASYNC_EMSMDB, EMSMDB, EPM, NSPI, RFR

if TYPE_CHECKING:
    from analyzer.dissect.secrets import Secrets

# interfaces whose stubs tshark leaves to the engine (their dissectors are disabled or do not exist in tshark)
STUB_INTERFACES = frozenset((EMSMDB, ASYNC_EMSMDB, NSPI, RFR, EPM))
CONFIG_DIR_ENV = "WIRESHARK_CONFIG_DIR"
KEYTAB_VERSION = 0x0502  # MIT keytab format version 2 (big-endian fields)
ENCTYPE_RC4_HMAC = 23
NT_PRINCIPAL = 1


def _counted(data: bytes) -> bytes:
    return struct.pack(">H", len(data)) + data


def keytab_bytes(secrets: Secrets) -> bytes:
    """An MIT keytab with one RC4-HMAC entry per secret, principal ``user@DOMAIN`` (realm ``ANY`` when the line
    gave no domain; tshark's NTLMSSP dissector does not match on it)."""
    out = [struct.pack(">H", KEYTAB_VERSION)]
    for s in secrets.entries:
        realm = (s.domain or "ANY").encode("utf-8")
        body = (struct.pack(">H", 1) + _counted(realm) + _counted(s.user.encode("utf-8"))
                + struct.pack(">IIB", NT_PRINCIPAL, 0, 1) + struct.pack(">H", ENCTYPE_RC4_HMAC) + _counted(s.nt_hash))
        out.append(struct.pack(">i", len(body)) + body)
    return b"".join(out)


@contextlib.contextmanager
def tshark_secrets_env(secrets: Secrets | None):
    """Within the block, tshark processes started by this process read ``secrets``. The caller must not start
    unrelated tshark runs concurrently (the tshark engine holds its process-wide lock)."""
    if not secrets:
        yield
        return
    folder = tempfile.mkdtemp(prefix="mailpush-tshark-")  # mode 0700
    previous = os.environ.get(CONFIG_DIR_ENV)
    try:
        keytab = os.path.join(folder, "secrets.keytab")
        fd = os.open(keytab, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(keytab_bytes(secrets))
        with open(os.path.join(folder, "preferences"), "w", encoding="utf-8") as fh:
            fh.write(f"kerberos.decrypt: TRUE\nkerberos.file: {keytab}\n")
        os.environ[CONFIG_DIR_ENV] = folder
        yield
    finally:
        if previous is None:
            os.environ.pop(CONFIG_DIR_ENV, None)
        else:
            os.environ[CONFIG_DIR_ENV] = previous
        shutil.rmtree(folder, ignore_errors=True)


def undecrypted_warnings(events, kerberos_conns=frozenset()) -> list[str]:
    """tshark says nothing when a password is wrong: one warning per connection whose sealed stubs it left
    encrypted. Only the interfaces whose tshark dissectors the engine turns off (so that the clear stub stays in
    ``dcerpc.decrypted_stub_data``) can be judged."""
    left: dict[int, list] = {}
    for e in events:
        # other interfaces: tshark hands the clear stub to its own dissector and the engine never sees it
        if e.encrypted and e.kind in ("request", "response") and e.interface in STUB_INTERFACES:
            left.setdefault(e.conn, []).append(e)
    out = []
    for conn, evs in left.items():
        e = evs[0]
        ends = [f"{e.src}:{e.sport}", f"{e.dst}:{e.dport}"]
        client, server = ends if e.kind == "request" else ends[::-1]
        if conn in kerberos_conns:
            out.append(f"TCP connection {conn} ({client} -> {server}): sealed with Kerberos: decryption needs a "
                       "keytab; the session stays encrypted")
            continue
        out.append(f"TCP connection {conn} ({client} -> {server}): tshark decrypted "
                   f"none of {len(evs)} sealed PDUs with the secrets (wrong password, no secret for the account, "
                   "or not sealed with NTLMSSP); they stay encrypted")
    return out
