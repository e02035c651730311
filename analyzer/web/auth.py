"""Accounts and authentication: API tokens (Bearer header) and login-form sessions (HttpOnly cookie).

Tokens and session ids are random (``secrets.token_urlsafe``) and only their sha256 is stored, so a copy of the
database does not let anyone log in. sha256 (not a slow password hash) is enough because the secrets are 256-bit
random values, not guessable passwords.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import secrets

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from analyzer.web.db import Database, LoginSession, User, utcnow

TOKEN_PREFIX = "mp_"  # makes a leaked token recognisable in logs and secret scanners
SESSION_COOKIE = "mailpush_session"
SESSION_LIFETIME = dt.timedelta(hours=12)
USER_NAME_RE = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")


class AuthError(Exception):
    pass


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def add_user(db: Database, name: str) -> str:
    """Create a user and return their new API token (shown once; only its hash is kept)."""
    if not USER_NAME_RE.match(name):
        raise AuthError("user name must be 1-64 characters of letters, digits, '.', '_', '@' or '-'")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    try:
        with db.session.begin() as s:
            s.add(User(name=name, token_hash=hash_secret(token)))
    except IntegrityError:
        raise AuthError(f"user {name!r} already exists (use 'mailpush user token {name}' for a new token)") from None
    return token


def new_token(db: Database, name: str) -> str:
    """Replace a user's API token (the old one stops working) and return the new one."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    with db.session.begin() as s:
        user = s.scalar(select(User).where(User.name == name))
        if user is None:
            raise AuthError(f"no user {name!r}")
        user.token_hash = hash_secret(token)
        s.execute(delete(LoginSession).where(LoginSession.user_id == user.id))
    return token


def list_users(db: Database) -> list[User]:
    with db.session() as s:
        return list(s.scalars(select(User).order_by(User.name)))


def user_for_token(db: Database, token: str | None) -> User | None:
    if not token:
        return None
    with db.session() as s:
        return s.scalar(select(User).where(User.token_hash == hash_secret(token)))


def create_session(db: Database, user_id: int) -> str:
    session_id = secrets.token_urlsafe(32)
    now = utcnow()
    with db.session.begin() as s:
        s.execute(delete(LoginSession).where(LoginSession.expires_at < now))  # housekeeping
        s.add(LoginSession(id_hash=hash_secret(session_id), user_id=user_id, created_at=now,
                           expires_at=now + SESSION_LIFETIME))
    return session_id


def user_for_session(db: Database, session_id: str | None) -> User | None:
    if not session_id:
        return None
    with db.session() as s:
        row = s.get(LoginSession, hash_secret(session_id))
        if row is None or row.expires_at < utcnow():
            return None
        return s.get(User, row.user_id)


def end_session(db: Database, session_id: str | None) -> None:
    if session_id:
        with db.session.begin() as s:
            s.execute(delete(LoginSession).where(LoginSession.id_hash == hash_secret(session_id)))
