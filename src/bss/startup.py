"""What a process checks before it serves or works: each engine reachable and usable, or one
line on stderr naming the setting and exit status 2 (never a traceback, never a service that
starts and then fails each request)."""

from __future__ import annotations

import sys
from typing import NoReturn

from sqlalchemy import Engine, text
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError

from bss.db import make_engine
from bss.migrate import SchemaError, ensure_current
from bss.settings import Settings


def refuse(message: str) -> NoReturn:
    sys.stderr.write(f"bss: {message}\n")
    raise SystemExit(2)


def safe_url(url: str) -> str:
    """The URL without password or query (either may hold a secret), for logs and messages."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url.split("?", 1)[0]
    authority, slash, path = rest.split("?", 1)[0].split("#", 1)[0].partition("/")
    if "@" in authority:
        userinfo, _, hosts = authority.rpartition("@")
        user = userinfo.split(":", 1)[0]
        authority = f"{user}@{hosts}" if user else hosts
    return f"{scheme}://{authority}{slash}{path}"


def _reason(exc: BaseException) -> str:
    """The driver's own first line (e.g. 'connection refused'), without SQLAlchemy's wrapping."""
    original = getattr(exc, "orig", None) or exc
    lines = [line.strip() for line in str(original).splitlines() if line.strip()]
    return lines[0] if lines else type(original).__name__


def connect_database(settings: Settings) -> Engine:
    """An engine for BSS_DATABASE_URL that has answered a query."""
    url = settings.resolved_database_url
    try:
        engine = make_engine(url)
    except (ArgumentError, NoSuchModuleError, ImportError, ValueError) as exc:
        refuse(f"BSS_DATABASE_URL {safe_url(url)!r} cannot be used: {_reason(exc)}")
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except DBAPIError as exc:
        engine.dispose()
        refuse(f"BSS_DATABASE_URL {safe_url(url)!r}: cannot connect: {_reason(exc)}")
    return engine


def open_database(settings: Settings) -> Engine:
    """The database, reachable and at this code's schema revision (the embedded SQLite
    database, or an empty PostgreSQL one, is upgraded here; bss.migrate.ensure_current)."""
    engine = connect_database(settings)
    try:
        ensure_current(engine)
    except SchemaError as exc:
        engine.dispose()
        refuse(str(exc))
    except DBAPIError as exc:
        engine.dispose()
        refuse(f"BSS_DATABASE_URL {safe_url(settings.resolved_database_url)!r}: {_reason(exc)}")
    return engine


def check_files(settings: Settings) -> None:
    """BSS_FILES_URL usable: an s3:// bucket that exists and that these credentials reach
    (a missing bucket or no credentials otherwise failed every upload with a 500)."""
    url = settings.resolved_files_url
    if url.startswith("file://"):
        return
    if not url.startswith("s3://"):
        refuse(f"BSS_FILES_URL {safe_url(url)!r}: use file:///path or s3://bucket/prefix")
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    from bss.files.s3 import probe_client, split_ref

    bucket, _prefix = split_ref(url)
    where = settings.s3_endpoint_url or "AWS S3"
    try:
        probe_client(settings.s3_endpoint_url).head_bucket(Bucket=bucket)
    except NoCredentialsError:
        refuse(
            f"BSS_FILES_URL {url!r}: no S3 credentials found (set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, AWS_PROFILE or an instance role)"
        )
    except ClientError as exc:
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        code = exc.response.get("Error", {}).get("Code", "")
        if status == 404 or code in {"404", "NoSuchBucket"}:
            refuse(f"BSS_FILES_URL {url!r}: bucket {bucket!r} does not exist at {where}")
        if status == 403 or code in {"403", "AccessDenied", "InvalidAccessKeyId"}:
            refuse(f"BSS_FILES_URL {url!r}: access to bucket {bucket!r} at {where} is denied")
        refuse(f"BSS_FILES_URL {url!r}: {where} answered {code or status} for bucket {bucket!r}")
    except (BotoCoreError, ValueError) as exc:
        refuse(f"BSS_FILES_URL {url!r}: cannot reach {where}: {_reason(exc)}")


def engines_in_use(settings: Settings) -> dict[str, str]:
    """The database, store and files engines, for the start-up log line (no secrets)."""
    return {
        "database": safe_url(settings.resolved_database_url),
        "store": safe_url(settings.resolved_store_url),
        "files": safe_url(settings.resolved_files_url),
    }
