# SPDX-License-Identifier: GPL-2.0-or-later
"""Account secrets for decrypting NTLMSSP-sealed DCE/RPC (``mailpush ... --secrets FILE`` or the environment
variable ``MAILPUSH_SECRETS_FILE``).

One secret per line::

    DOMAIN\\user:password
    user:password              (any domain)
    user::0123456789abcdef0123456789abcdef   (the NT hash, 32 hex digits)

Blank lines and lines starting with ``#`` are ignored. The user name ends at the first colon, so a password may
contain colons. The native engine needs only the NT hash (MD4 of the UTF-16LE password, MS-NLMP 3.3.1); the
password is kept (hidden like the hash) because tshark's NTLMSSP preference takes a password, not a hash.

Secrets must never reach a log, a report, the events table, an exception or a traceback: :class:`Secret` hides
its hash from ``repr``/``str``, and errors name the file and the line number, never the line's text.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

ENV_VAR = "MAILPUSH_SECRETS_FILE"
_HEX32 = re.compile(r"[0-9A-Fa-f]{32}")


class SecretsError(ValueError):
    """The secrets file cannot be used. The message never quotes the file's content."""


def nt_hash(password: str) -> bytes:
    """NTOWFv1 (MS-NLMP 3.3.1): MD4 of the UTF-16LE password."""
    from Crypto.Hash import MD4  # here: runs without --secrets never load pycryptodome

    return MD4.new(password.encode("utf-16-le")).digest()


@dataclass(frozen=True)
class Secret:
    """One account. ``domain`` is None when the line gave no domain (it then matches any domain)."""

    user: str
    domain: str | None
    nt_hash: bytes = field(repr=False)
    password: str | None = field(default=None, repr=False)  # None for user::NTHASH lines

    def __repr__(self) -> str:  # the hash stays out of logs and tracebacks
        return f"Secret({self.label!r})"

    __str__ = __repr__

    @property
    def label(self) -> str:
        return f"{self.domain}\\{self.user}" if self.domain else self.user

    def matches(self, user: str, domain: str) -> bool:
        """Same user (case-insensitive) and, when the line names one, the same domain. A NetBIOS name matches the
        DNS name it starts (CONTOSO and contoso.example): clients send either in the logon."""
        if self.user.casefold() != user.casefold():
            return False
        if self.domain is None:
            return True
        mine, theirs = self.domain.casefold(), domain.casefold()
        return mine == theirs or mine == theirs.split(".")[0] or theirs == mine.split(".")[0]


class Secrets:
    """The secrets of one run. Immutable after loading; safe to share between captures."""

    def __init__(self, entries: list[Secret] | None = None):
        self.entries: list[Secret] = list(entries or [])

    def __repr__(self) -> str:
        return f"Secrets({len(self.entries)} entries)"

    __str__ = __repr__

    def __len__(self) -> int:
        return len(self.entries)

    def __bool__(self) -> bool:
        return bool(self.entries)

    def for_user(self, user: str, domain: str) -> list[Secret]:
        return [s for s in self.entries if s.matches(user, domain)]

    @classmethod
    def parse(cls, text: str, source: str = "secrets file") -> "Secrets":
        entries = []
        for number, raw in enumerate(text.splitlines(), 1):
            line = raw.strip("\r\n")
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            entries.append(_parse_line(line, number, source))
        return cls(entries)

    @classmethod
    def load(cls, path) -> "Secrets":
        """Read a secrets file. Raises :class:`SecretsError` with a message safe to print."""
        p = Path(path)
        try:
            data = p.read_bytes()
        except OSError as exc:
            raise SecretsError(f"cannot read secrets file {p}: {exc.strerror or type(exc).__name__}") from None
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise SecretsError(f"secrets file {p} is not UTF-8 text") from None
        secrets = cls.parse(text, source=f"secrets file {p}")
        if not secrets:
            raise SecretsError(f"secrets file {p} holds no secrets")
        return secrets


def _parse_line(line: str, number: int, source: str) -> Secret:
    where = f"{source}, line {number}"
    account, sep, rest = line.partition(":")
    if not sep or not account.strip():
        raise SecretsError(f"{where}: expected DOMAIN\\user:password, user:password or user::NTHASH")
    account = account.strip()
    domain, backslash, user = account.rpartition("\\")
    if not backslash:
        domain, user = None, account
    if not user or (backslash and not domain):
        raise SecretsError(f"{where}: expected DOMAIN\\user before the colon")
    if rest.startswith(":") and _HEX32.fullmatch(rest[1:].strip()):
        return Secret(user, domain, bytes.fromhex(rest[1:].strip()))
    if not rest:
        raise SecretsError(f"{where}: empty password")
    return Secret(user, domain, nt_hash(rest), rest)


def load_secrets(path=None) -> Secrets | None:
    """The secrets given by ``--secrets`` (``path``) or else by ``MAILPUSH_SECRETS_FILE``; None when neither is
    set. Raises :class:`SecretsError`."""
    if path is None:
        path = os.environ.get(ENV_VAR) or None
    if path is None:
        return None
    return Secrets.load(path)
