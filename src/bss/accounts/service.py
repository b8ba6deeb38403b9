"""Accounts: password hashing (argon2), logins, tokens, members and users."""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
import secrets
import time
from dataclasses import dataclass
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import Engine, delete, func, insert, select, update

from bss.accounts.models import logins, members, tokens, users
from bss.db import bounded_int, fmt_ts, inserted_id, now_s, run_sql, write_tx
from bss.errors import BssError, Invalid, NotAuthenticated, NotFound, RateLimited
from bss.ratelimit import RateLimiter
from bss.settings import Settings

USER_TYPES = ("admin", "member", "data_provider")
log = logging.getLogger("bss.accounts")
_hasher = PasswordHasher()


@dataclass(frozen=True, slots=True)
class Principal:
    user_id: int
    username: str
    user_type: str
    member_id: int | None

    @property
    def is_admin(self) -> bool:
        return self.user_type == "admin"


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


#: Set by POST /auth after a correct password (only /auth sees it): a known client's proof.
DEVICE_COOKIE = "bss_device"
DEVICE_COOKIE_SECONDS = 400 * 86400  # the longest a browser keeps a cookie


@functools.cache
def _dummy_hash() -> str:
    """Checked in place of an unknown user's hash: a login takes one argon2 verification
    whether the username exists or not, so its time does not tell."""
    return hash_password(secrets.token_hex(16))


def _device_proof(user_id: int, password_hash: str) -> str:
    """What a client that logged in before holds (the device cookie): keyed by the stored
    password hash, so nobody can make it without a correct login, and a new password ends it."""
    message = f"bss-device:{user_id}".encode()
    return hmac.new(password_hash.encode(), message, hashlib.sha256).hexdigest()


def device_proof(db: Engine, username: str) -> str | None:
    """The device cookie's value for a user (after a successful login)."""
    with db.connect() as conn:
        row = conn.execute(
            select(users.c.id, users.c.password_hash).where(users.c.username == username)
        ).first()
    return None if row is None else _device_proof(row.id, row.password_hash)


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def ensure_admin(db: Engine, settings: Settings) -> None:
    """First start: create the admin named by BSS_ADMIN_USERNAME / BSS_ADMIN_PASSWORD. Every
    start says what it did with them: a service nobody can log in to says how to fix that, and
    a changed password for an existing admin is reported as ignored (the stored one, perhaps
    changed through the API since, stays; `bss user update` changes it)."""
    username, password = settings.admin_username, settings.admin_password
    if not (username and password):
        with db.connect() as conn:
            has_users = conn.execute(select(users.c.id).limit(1)).first() is not None
        if bool(username) != bool(password):
            log.warning("BSS_ADMIN_USERNAME and BSS_ADMIN_PASSWORD must be set together; ignored")
        if not has_users:
            log.warning(
                "no users yet, so nobody can log in: restart with BSS_ADMIN_USERNAME=admin and "
                "BSS_ADMIN_PASSWORD=<a password of at least 8 characters> to create the first admin"
            )
        return
    with write_tx(db) as conn:
        existing = (
            conn.execute(
                select(users.c.id, users.c.password_hash).where(users.c.username == username)
            )
            .mappings()
            .first()
        )
        if existing is None:
            now = now_s()
            conn.execute(
                insert(users).values(
                    username=username,
                    password_hash=hash_password(password),
                    user_type="admin",
                    member_id=None,
                    created_on=now,
                    last_modified=now,
                )
            )
    if existing is None:
        log.info("created the admin user from BSS_ADMIN_USERNAME", extra={"username": username})
    elif not verify_password(existing["password_hash"], password):
        log.warning(
            "BSS_ADMIN_PASSWORD differs from the stored password of this user and was ignored "
            "(it only sets the first password); change it with "
            f"`bss user update {existing['id']} --new-password ...` or PUT /user?id={existing['id']}",
            extra={"username": username},
        )


def _failure_limits(
    settings: Settings, username: str, client: str, *, known_client: bool
) -> list[tuple[str, int]]:
    """Failed-password counters: per user and client address (stops one guesser without
    locking the user out for everyone else) and per user (a far higher ceiling, against
    guessing spread over many addresses). A known client (one holding the device cookie of
    an earlier successful login) is held by the first only: strangers who exhaust the
    ceiling cannot lock the user out of the browsers and CLIs it already uses."""
    limits = [(f"login-failures:{username}@{client}", settings.login_failures_per_client)]
    if not known_client:
        limits.append((f"login-failures:{username}", settings.login_failures_per_user))
    return limits


def login(
    db: Engine,
    settings: Settings,
    username: str,
    password: str,
    *,
    limiter: RateLimiter,
    client: str,
    device: str | None = None,
) -> str:
    """A new token for a correct password; `device` is the device cookie the client sent."""
    with db.connect() as conn:
        row = conn.execute(select(users).where(users.c.username == username)).mappings().first()
    known_client = (
        row is not None
        and device is not None
        and hmac.compare_digest(device, _device_proof(row["id"], row["password_hash"]))
    )
    # Every attempt is counted as a failure before the password is checked and refunded when
    # it succeeds: concurrent guesses, in however many processes, cannot slip past the limit.
    window = settings.login_window_seconds
    counted: list[tuple[str, int]] = []
    for key, limit in _failure_limits(settings, username[:200], client, known_client=known_client):
        verdict = limiter.hit(key, limit, window)
        counted.append((key, limit))
        if not verdict.allowed:
            _refund(limiter, counted, window)  # a refused attempt checked no password
            raise RateLimited(
                "Too many failed logins for this user from this address; try again in "
                f"{verdict.retry_after} seconds",
                error_id="UNAUTH",
                error_code="LOGIN_RATE_EXCEEDED",
                retry_after=verdict.retry_after,
            )
    checked = verify_password(_dummy_hash() if row is None else row["password_hash"], password)
    if row is None or not checked:
        raise NotAuthenticated("No match found for user/pass", error_id="UNAUTH")
    _refund(limiter, counted, window)
    now = now_s()
    with db.connect() as conn:  # read outside the write transaction (see write_tx)
        recent = conn.execute(
            select(func.count())
            .select_from(logins)
            .where(logins.c.user_id == row["id"], logins.c.at > now - settings.login_window_seconds)
        ).scalar_one()
    if recent >= settings.logins_per_window:
        raise RateLimited(
            f"Too many logins: at most {settings.logins_per_window} per "
            f"{settings.login_window_seconds // 60} minutes per user; reuse your token",
            error_id="UNAUTH",
            error_code="LOGIN_RATE_EXCEEDED",
            retry_after=settings.login_window_seconds,
        )
    token = secrets.token_hex(24)
    with write_tx(db) as conn:
        conn.execute(insert(logins).values(user_id=row["id"], at=now))
        conn.execute(
            insert(tokens).values(
                token_hash=_token_hash(token),
                user_id=row["id"],
                expires_at=now + settings.token_ttl_seconds,
            )
        )
    return token


def _refund(limiter: RateLimiter, counted: list[tuple[str, int]], window: int) -> None:
    for key, limit in counted:
        limiter.hit(key, limit, window, cost=-1)


#: The session behind a token, on every request: run on the driver directly (see run_sql).
_PRINCIPAL_SQL = (
    "SELECT users.id, users.username, users.user_type, users.member_id, tokens.expires_at "
    "FROM tokens JOIN users ON users.id = tokens.user_id WHERE tokens.token_hash = :token_hash"
)


def _expired_or_invalid() -> BssError:
    return NotAuthenticated("Authentication failed - token expired or invalid; log in again")


def principal_for_token(db: Engine, token: str | None) -> Principal:
    if not token:
        raise NotAuthenticated()
    generation = _generation[0]
    rows = run_sql(db, _PRINCIPAL_SQL, {"token_hash": _token_hash(token)})
    # Times are whole seconds: a token lives at least its TTL (up to a second more), never less.
    if not rows or rows[0]["expires_at"] < now_s():
        _principals.pop((id(db), token), None)
        raise _expired_or_invalid()
    row = rows[0]
    found = Principal(row["id"], row["username"], row["user_type"], row["member_id"])
    if generation == _generation[0]:  # not read across a revocation made in this process
        _remember(db, token, found, row["expires_at"])
    return found


#: How long (seconds) a process answers a token from memory before it reads the token again:
#: a token revoked elsewhere (logout, a changed password, a deleted user or member, `bss user
#: update` in another process) is refused by every process at most this long after the change;
#: the process that made the change forgets its cached tokens at once. A token's own expiry
#: is checked on every request, cached or not.
PRINCIPAL_CACHE_SECONDS = 1.0
_CACHE_MAX = 4096
#: (id of the engine, token) -> (principal, token's expires_at, monotonic time read again at)
_principals: dict[tuple[int, str], tuple[Principal, int, float]] = {}
#: Bumped by forget_principals(): a read that began before a revocation is not cached.
_generation = [0]


def _remember(db: Engine, token: str, found: Principal, expires_at: int) -> None:
    if len(_principals) >= _CACHE_MAX:
        now = time.monotonic()
        for key in [k for k, v in list(_principals.items()) if v[2] <= now]:
            _principals.pop(key, None)
        if len(_principals) >= _CACHE_MAX:
            _principals.clear()
    _principals[(id(db), token)] = (found, expires_at, time.monotonic() + PRINCIPAL_CACHE_SECONDS)


def cached_principal(db: Engine, token: str | None) -> tuple[Principal | None, bool]:
    """The principal of a token read less than PRINCIPAL_CACHE_SECONDS ago (no I/O: safe on
    the event loop), or None when it must be read (principal_for_token); and whether it is
    due to be read again soon (a read made ahead keeps busy tokens from all missing at once).
    Raises NOAUTH, as principal_for_token does, for no token or a cached token that has
    expired since."""
    if not token:
        raise NotAuthenticated()
    entry = _principals.get((id(db), token))
    if entry is None:
        return None, False
    found, expires_at, until = entry
    left = until - time.monotonic()
    if left <= 0:
        _principals.pop((id(db), token), None)
        return None, False
    if expires_at < now_s():
        raise _expired_or_invalid()
    return found, left < PRINCIPAL_CACHE_SECONDS / 4


def forget_principals() -> None:
    """Drop every cached token: called after anything that can revoke a session."""
    _generation[0] += 1
    _principals.clear()


def logout(db: Engine, token: str) -> None:
    with write_tx(db) as conn:
        conn.execute(delete(tokens).where(tokens.c.token_hash == _token_hash(token)))
    forget_principals()


def purge_auth(db: Engine, settings: Settings) -> None:
    now = now_s()
    with write_tx(db) as conn:
        conn.execute(delete(tokens).where(tokens.c.expires_at < now))
        conn.execute(delete(logins).where(logins.c.at <= now - settings.login_window_seconds))


# --- members -------------------------------------------------------------------------------


def member_out(row: Any) -> dict[str, Any]:
    return {
        "id": row["id"],
        "name": row["name"],
        "state": row["state"],
        "created_on": fmt_ts(row["created_on"]),
        "last_modified": fmt_ts(row["last_modified"]),
    }


def list_members(db: Engine, member_id: int | None = None) -> list[dict[str, Any]]:
    q = select(members).order_by(members.c.id)
    if member_id is not None:
        q = q.where(members.c.id == member_id)
    with db.connect() as conn:
        return [member_out(r) for r in conn.execute(q).mappings()]


def get_member(db: Engine, member_id: int) -> dict[str, Any]:
    found = list_members(db, member_id)
    if not found:
        raise NotFound(f"member {member_id} not found")
    return found[0]


def create_member(db: Engine, data: dict[str, Any]) -> dict[str, Any]:
    now = now_s()
    values: dict[str, Any] = {
        "name": str(data.get("name") or ""),
        "state": _state(data.get("state", "active")),
        "created_on": now,
        "last_modified": now,
    }
    if data.get("id") is not None:
        values["id"] = _int(data["id"], "id")
    with write_tx(db) as conn:
        if (
            "id" in values
            and conn.execute(select(members.c.id).where(members.c.id == values["id"])).first()
        ):
            raise Invalid(f"member {values['id']} already exists")
        new_id = inserted_id(conn.execute(insert(members).values(**values)))
    return get_member(db, int(new_id))


def update_member(db: Engine, member_id: int, data: dict[str, Any]) -> dict[str, Any]:
    values: dict[str, Any] = {"last_modified": now_s()}
    if "name" in data:
        values["name"] = str(data["name"] or "")
    if "state" in data:
        values["state"] = _state(data["state"])
    with write_tx(db) as conn:
        if (
            conn.execute(update(members).where(members.c.id == member_id).values(**values)).rowcount
            == 0
        ):
            raise NotFound(f"member {member_id} not found")
    return get_member(db, member_id)


def member_exists(db: Engine, member_id: int) -> bool:
    with db.connect() as conn:
        return (
            conn.execute(select(members.c.id).where(members.c.id == member_id)).first() is not None
        )


# --- users ---------------------------------------------------------------------------------


def user_out(row: Any) -> dict[str, Any]:
    return {
        "id": row["id"],
        "username": row["username"],
        "user_type": row["user_type"],
        "member_id": row["member_id"],
        "created_on": fmt_ts(row["created_on"]),
        "last_modified": fmt_ts(row["last_modified"]),
    }


def list_users(
    db: Engine, *, user_id: int | None = None, member_id: int | None = None
) -> list[dict[str, Any]]:
    q = select(users).order_by(users.c.id)
    if user_id is not None:
        q = q.where(users.c.id == user_id)
    if member_id is not None:
        q = q.where(users.c.member_id == member_id)
    with db.connect() as conn:
        return [user_out(r) for r in conn.execute(q).mappings()]


def get_user(db: Engine, user_id: int) -> dict[str, Any]:
    found = list_users(db, user_id=user_id)
    if not found:
        raise NotFound(f"user {user_id} not found")
    return found[0]


def _check_user_fields(db: Engine, user_type: str, member_id: int | None) -> None:
    if user_type not in USER_TYPES:
        raise Invalid(f"user_type must be one of {', '.join(USER_TYPES)}")
    if user_type != "admin":
        if member_id is None:
            raise Invalid("member_id is required for member and data_provider users")
        if not member_exists(db, member_id):
            raise Invalid(f"member {member_id} does not exist")


def create_user(db: Engine, data: dict[str, Any]) -> dict[str, Any]:
    username = str(data.get("username") or "").strip()
    password = data.get("password")
    if not username or not isinstance(password, str) or len(password) < 8:
        raise Invalid("username and a password of at least 8 characters are required")
    user_type = str(data.get("user_type") or "member")
    member_id = _int(data["member_id"], "member_id") if data.get("member_id") is not None else None
    _check_user_fields(db, user_type, member_id)
    now = now_s()
    with write_tx(db) as conn:
        if conn.execute(select(users.c.id).where(users.c.username == username)).first():
            raise Invalid(f"username {username!r} is taken")
        inserted = conn.execute(
            insert(users).values(
                username=username,
                password_hash=hash_password(password),
                user_type=user_type,
                member_id=None if user_type == "admin" else member_id,
                created_on=now,
                last_modified=now,
            )
        )
        new_id = inserted_id(inserted)
    return get_user(db, int(new_id))


def update_user(db: Engine, user_id: int, data: dict[str, Any]) -> dict[str, Any]:
    current = get_user(db, user_id)
    values: dict[str, Any] = {"last_modified": now_s()}
    if data.get("password") is not None:
        if not isinstance(data["password"], str) or len(data["password"]) < 8:
            raise Invalid("password must have at least 8 characters")
        values["password_hash"] = hash_password(data["password"])
    user_type = str(data.get("user_type") or current["user_type"])
    member_id = data.get("member_id", current["member_id"])
    member_id = _int(member_id, "member_id") if member_id is not None else None
    _check_user_fields(db, user_type, member_id)
    values["user_type"] = user_type
    values["member_id"] = None if user_type == "admin" else member_id
    with write_tx(db) as conn:
        conn.execute(update(users).where(users.c.id == user_id).values(**values))
        if "password_hash" in values:  # a new password ends existing sessions
            conn.execute(delete(tokens).where(tokens.c.user_id == user_id))
    forget_principals()  # a changed type or member applies to its sessions at once
    return get_user(db, user_id)


def delete_user(db: Engine, user_id: int) -> None:
    with write_tx(db) as conn:
        conn.execute(delete(tokens).where(tokens.c.user_id == user_id))
        conn.execute(delete(logins).where(logins.c.user_id == user_id))
        if conn.execute(delete(users).where(users.c.id == user_id)).rowcount == 0:
            raise NotFound(f"user {user_id} not found")
    forget_principals()


def _state(value: Any) -> str:
    text = str(value or "active").lower()
    if text not in ("active", "inactive"):
        raise Invalid("state must be active or inactive")
    return text


def _int(value: Any, name: str) -> int:
    return bounded_int(value, name)
