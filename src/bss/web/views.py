"""The dashboard's pages: server-rendered HTML over the same accounts, tokens and services.

Pages only read; every change the browser makes goes through the JSON API (the page's
scripts call it with the session cookie plus X-CSRF-Token, see bss.api.browser_guard).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import ada_url
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, PackageLoader, select_autoescape
from sqlalchemy import Engine

from bss.accounts import service as accounts
from bss.accounts.service import Principal, principal_for_token
from bss.api.browser_guard import BrowserGuard, csrf_token_for
from bss.api.deps import TOKEN_COOKIE, AppSettings, Db, Jobs, Stores, database, member_scope
from bss.api.envelope import status_of
from bss.api.params import read_int
from bss.db import fmt_ts, now_s
from bss.errors import BssError, Forbidden, Invalid, NotFound
from bss.ingest.report import read_report
from bss.ingest.result import COUNTER_NAMES
from bss.jobs.models import PHASES
from bss.jobs.worker import StoreHandle
from bss.segments import service as segments
from bss.targeting.service import NONE_REASONS
from bss.web import charts, stats

router = APIRouter(include_in_schema=False)
STATIC_DIR = Path(__file__).parent / "static"
SOURCES = ("api", "s3", "folder")
PAGE_SIZES = (25, 100, 1000)
FINAL_PHASES = ("completed", "error")
#: Rows of the error log a job page shows (the complete list is the downloadable report).
ERROR_ROWS_SHOWN = 200

templates = Environment(
    loader=PackageLoader("bss.web", "templates"),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)

#: For a failed job: what went wrong, in words, and what to do about it.
FAILURE_HELP: dict[str, tuple[str, str]] = {
    "too_many_invalid_lines": (
        "The file had more invalid lines than the member's config tolerates, so processing "
        "stopped. Lines before that point were applied.",
        "Open the error log below or download the complete report, fix the lines it names "
        "(their counter says which rule they broke), and upload the corrected file as a new job.",
    ),
    "empty_file": (
        "The file has no bytes, or is gzip that decompresses to nothing.",
        "Check that the file was written completely, then upload it again as a new job.",
    ),
    "not_a_segment_file": (
        "The file is binary data: neither Avro nor a text segment file.",
        "Upload the segment file itself (plain text, gzip or Avro), not another kind of file.",
    ),
    "FILESIZE_LIMIT_EXCEEDED": (
        "The file dropped for passive upload is larger than the service's file limit, so it "
        "was not read.",
        "Split the data into several smaller files and drop each as its own file.",
    ),
    "corrupt_gzip": (
        "The file starts like gzip but cannot be decompressed.",
        "Check the file with `gzip -t FILE`, compress it again, and upload it as a new job.",
    ),
    "corrupt_avro": (
        "The Avro file is damaged (bad header, block or sync marker).",
        "Write the file again with your Avro tool and upload it as a new job.",
    ),
    "avro_schema_invalid": (
        "The Avro file's schema is not the documented segment schema.",
        "Write the file with the documented schema (see the docs) and upload it again.",
    ),
    "unsupported_compression": (
        "The file uses a compression this service does not read.",
        "Send plain text, gzip, or Avro with the null, deflate or snappy codec.",
    ),
    "invalid_avro": (
        "The Avro link file cannot be read.",
        "Write the file again with the documented link schema and upload it as a new job.",
    ),
    "decompression_limit_exceeded": (
        "The file expands to more than the service allows once decompressed.",
        "Split the data into several smaller files and upload each as its own job.",
    ),
    "replace_removal_over_limit": (
        "Replacing would have removed more of a segment's members than the member's config "
        "allows (max_replace_removal_fraction), so nothing was removed.",
        "Check that the file is complete; if the removals are meant, upload it again forced "
        "(force=true, bss upload --force, or a passive file named replace-force.*) or raise "
        "the fraction in the config.",
    ),
    "replace_links": (
        "A link file was named as a replace-mode upload (replace.*); link files are only "
        "added, never replaced, so it was not processed.",
        "Drop the file again under a name without the replace. prefix.",
    ),
    "upload_url_expired": (
        "No file arrived at the job's upload URL in time, so the URL expired.",
        "Start a new upload: each job's URL must be used within minutes of its creation.",
    ),
    "upload_url_replaced": (
        "A newer job of this member replaced this one's upload URL before a file arrived.",
        "Upload to the newest job's URL, or start a new upload.",
    ),
    "uploading-error": (
        "The upload did not finish: it was cut off, refused by a limit, or took too long.",
        "Read the message above. For a limit, wait for the hour or day to pass or ask an "
        "admin to raise it; otherwise upload the file again as a new job.",
    ),
    "file_missing": (
        "The uploaded file was gone when a worker came to process it.",
        "Upload the file again as a new job.",
    ),
    "processing-error": (
        "The service failed while processing the file.",
        "Upload the file again; if it fails again, give the job id to your admin (the server "
        "log has the details).",
    ),
}
FAILURE_DEFAULT = (
    "The job ended in an error.",
    "Read the message above, fix the file or the setting it names, and upload it again.",
)


class LoginRequired(Exception):
    """No valid session: the page redirects to the login page."""


def _session(request: Request) -> tuple[Principal, str]:
    token = request.cookies.get(TOKEN_COOKIE)
    if not token:
        raise LoginRequired
    try:
        found = principal_for_token(database(request), token)
    except BssError as exc:
        raise LoginRequired from exc
    return found, token


def render(request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    html = templates.get_template(name).render(request=request, **context)
    # Wall time, and this thread's CPU time (what the page costs on a machine under load).
    wall_ms = (time.perf_counter() - request.state.render_started) * 1000
    cpu_ms = (time.thread_time() - request.state.cpu_started) * 1000
    return HTMLResponse(
        html,
        status_code=status_code,
        headers={
            "Server-Timing": f"render;dur={wall_ms:.1f}, cpu;dur={cpu_ms:.1f}",
            "Cache-Control": "no-store",
        },
    )


def page(view: Callable[..., Response]) -> Callable[..., Response]:
    """A logged-in page: redirects to the login page without a session, shows domain errors
    (404, 403, bad parameters) as an error page with the documented status."""

    @functools.wraps(view)
    def wrapper(request: Request, *args: Any, **kwargs: Any) -> Response:
        request.state.render_started = time.perf_counter()
        request.state.cpu_started = time.thread_time()
        try:
            p, token = _session(request)
            request.state.principal = p
            request.state.csrf = csrf_token_for(token)
            return view(request, *args, **kwargs)
        except LoginRequired:
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse("/ui/login?" + urlencode({"next": target}), status_code=303)
        except BssError as exc:
            return render(
                request,
                "error.html",
                status_code=status_of(exc),
                error=exc,
                nav="",
                **_base(request),
            )

    return wrapper


def _base(request: Request) -> dict[str, Any]:
    p: Principal | None = getattr(request.state, "principal", None)
    return {"user": p, "csrf": getattr(request.state, "csrf", "")}


def _members(db: Engine, p: Principal) -> list[dict[str, Any]]:
    if p.is_admin:
        return accounts.list_members(db)
    return []


def _day_start(text: str, name: str) -> int:
    try:
        day = date.fromisoformat(text)
    except ValueError as exc:
        raise Invalid(f"{name} must be a date like 2026-11-24") from exc
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp())


def _member_arg(request: Request, p: Principal) -> int | None:
    """The member a page shows (?member_id=): only an admin may name another member."""
    member_id = read_int(request.query_params.get("member_id"), "member_id")
    return member_scope(p, member_id, required=False)


def _int_arg(request: Request, name: str, default: int, *, minimum: int = 0) -> int:
    raw = request.query_params.get(name) or ""
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise Invalid(f"{name} must be an integer") from exc
    if value < minimum:
        raise Invalid(f"{name} must be at least {minimum}")
    return value


def _choice(request: Request, name: str, allowed: tuple[str, ...]) -> str:
    value = request.query_params.get(name) or ""
    if value and value not in allowed:
        raise Invalid(f"{name} must be one of {', '.join(allowed)}")
    return value


def match_rate(job: dict[str, Any]) -> float | None:
    """num_valid_user / (num_valid_user + num_invalid_user); None before any user was read."""
    seen = job["num_valid_user"] + job["num_invalid_user"]
    return job["num_valid_user"] / seen if seen else None


# --- login -----------------------------------------------------------------------------------


#: The target is resolved against origins of both schemes: "http:x" is a path on an http
#: site but another host on an https one, and the service may be served either way.
_ORIGINS = ("http://bss.invalid", "https://bss.invalid")


def same_origin_path(target: str | None) -> str:
    """Where to go after logging in: `target` if a browser resolves it to a path of this
    service (as the normalised path, query and fragment), else "/".

    Parsed by the WHATWG URL standard, as the browser will parse it: tabs and newlines are
    dropped and backslashes are slashes there, so `/\\evil.example/` or `/<TAB>/evil.example/`
    would leave the site although they start with one "/".
    """
    paths = set()
    for origin in _ORIGINS:
        try:
            url = ada_url.URL(target or "/", origin + "/")
        except ValueError:
            return "/"
        if url.origin != origin:
            return "/"  # only ever back into this service
        paths.add(url.pathname + url.search + url.hash)
    (path,) = paths if len(paths) == 1 else ("/",)
    return path if path.startswith("/") and not path.startswith("//") else "/"


@router.get("/ui/login")
def login_page(request: Request) -> Response:
    request.state.render_started = time.perf_counter()
    request.state.cpu_started = time.thread_time()
    target = same_origin_path(request.query_params.get("next"))
    try:
        _session(request)
        return RedirectResponse(target, status_code=303)  # already logged in
    except LoginRequired:
        pass
    return render(request, "login.html", next=target, user=None, csrf="", nav="")


# --- jobs ------------------------------------------------------------------------------------


@router.get("/")
@page
def jobs_page(request: Request, db: Db, jobs: Jobs, settings: AppSettings) -> Response:
    p: Principal = request.state.principal
    qp = request.query_params
    member_id = _member_arg(request, p)
    phase = _choice(request, "phase", PHASES)
    source = _choice(request, "source", SOURCES)
    per_page = _int_arg(request, "per_page", 100, minimum=1)
    if per_page not in PAGE_SIZES:
        raise Invalid(f"per_page must be one of {', '.join(map(str, PAGE_SIZES))}")
    page_no = _int_arg(request, "page", 1, minimum=1)
    filters: dict[str, Any] = {"phase": phase or None, "upload_source": source or None}
    if qp.get("from"):
        filters["min_last_modified"] = _day_start(qp["from"], "from")
    if qp.get("to"):
        filters["max_last_modified"] = _day_start(qp["to"], "to") + 86399
    total, items = jobs.list_jobs(
        member_id, start=(page_no - 1) * per_page, num=per_page, filters=filters
    )
    pages = max(1, -(-total // per_page))
    # The same listing through the JSON API, which the page polls for live phase and percent.
    api_filters = {
        "member_id": member_id,
        "phase": phase,
        "upload_source": source,
        "min_last_modified": fmt_ts(filters.get("min_last_modified")),
        "max_last_modified": fmt_ts(filters.get("max_last_modified")),
    }
    kept = {k: v for k, v in qp.items() if k != "page" and v}
    return render(
        request,
        "jobs.html",
        nav="jobs",
        jobs=[_history_row(job) for job in items],
        total=total,
        api_query=urlencode({k: v for k, v in api_filters.items() if v}),
        page_no=page_no,
        pages=pages,
        per_page=per_page,
        page_sizes=PAGE_SIZES,
        phases=PHASES,
        sources=SOURCES,
        member_id=member_id,
        members=_members(db, p),
        args=qp,
        page_link=lambda n: "/?" + urlencode({**kept, "page": n}),
        history_days=settings.history_days,
        **_base(request),
    )


def _history_row(job: dict[str, Any]) -> dict[str, Any]:
    """What one history row shows, formatted here: 1000 rows render in Python, not macros."""
    return {
        "job_id": job["job_id"],
        "short": job["job_id"][:12],
        "member_id": job["member_id"],
        "source": job["upload_source"],
        "phase": job["phase"],
        "final": 1 if job["phase"] in FINAL_PHASES else 0,
        "pct": job["percent_complete"],
        "valid": f"{job['num_valid']:,}",
        "invalid": f"{sum(job[k] for k in stats.ERROR_KINDS):,}",
        "created_on": job["created_on"],
    }


def _error_rows(job: dict[str, Any], report: Path | None) -> tuple[list[dict[str, str]], bool]:
    """The first rejected lines (line_no, counter, reason, raw) and whether there are more.

    The CSV report has the line numbers and separates reason from raw line; a job without
    one (older, or refused before processing) falls back to the documented error_log_lines.
    """
    rows: list[dict[str, str]] = []
    if report is not None and report.exists():
        for row in read_report(report):
            if len(rows) == ERROR_ROWS_SHOWN:
                return rows, True
            rows.append(row)
        return rows, False
    for line in (job.get("error_log_lines") or "").splitlines():
        counter, sep, rest = line.partition("-")
        if not sep or counter not in COUNTER_NAMES:
            counter, rest = "", line
        rows.append({"line_no": "", "counter": counter, "reason": "", "raw": rest})
    return rows, False


@router.get("/ui/jobs/{job_id}")
@page
def job_page(request: Request, job_id: str, db: Db, jobs: Jobs) -> Response:
    p: Principal = request.state.principal
    svc = jobs
    row = svc.job_row(job_id)
    if row is None or not (p.is_admin or row["member_id"] == p.member_id):
        raise NotFound(f"job {job_id} not found")
    job = svc.job_out(row)
    report = Path(row["report_path"] or svc.reports_dir / f"{job_id}.csv")
    error_rows, more_errors = _error_rows(job, report)
    seg_log = stats.parse_segment_log(job["segment_log_lines"])
    names = segments.segments_by_ids(db, sorted({s for _, s, _ in seg_log}))
    failure = None
    if job["phase"] == "error":
        failure = FAILURE_HELP.get(job["error_code"] or "", FAILURE_DEFAULT)
    fields = [
        (name, job[name]) for name in job if name not in ("error_log_lines", "segment_log_lines")
    ]
    return render(
        request,
        "job.html",
        nav="jobs",
        job=job,
        fields=fields,
        counters=[(name, job[name]) for name in COUNTER_NAMES],
        final=job["phase"] in FINAL_PHASES,
        match_rate=match_rate(job),
        error_rows=error_rows,
        more_errors=more_errors,
        has_report=report.exists(),
        segment_log=[(a, s, n, names.get(s)) for a, s, n in seg_log],
        failure=failure,
        **_base(request),
    )


# --- upload ----------------------------------------------------------------------------------


@router.get("/ui/upload")
@page
def upload_page(request: Request, db: Db) -> Response:
    p: Principal = request.state.principal
    return render(
        request,
        "upload.html",
        nav="upload",
        members=_members(db, p),
        member_id=_member_arg(request, p),
        **_base(request),
    )


# --- segments --------------------------------------------------------------------------------


def _member_counts(stores: StoreHandle) -> dict[int, int] | None:
    """Kept exact by the store as writes apply: no cache needed."""
    try:
        return stores.get().segment_member_counts(now_s())
    except Exception:  # the page still lists segments without their counts
        return None


@router.get("/ui/segments")
@page
def segments_page(request: Request, db: Db, stores: Stores) -> Response:
    p: Principal = request.state.principal
    member_id = _member_arg(request, p)
    search = request.query_params.get("search") or ""
    per_page = 100
    page_no = _int_arg(request, "page", 1, minimum=1)
    total, rows = segments.list_segments(
        db,
        member_id=member_id,
        search=search or None,
        start=(page_no - 1) * per_page,
        limit=per_page,
    )
    counts = _member_counts(stores)
    items = [
        segments.segment_out(r, None if counts is None else counts.get(r["id"], 0)) for r in rows
    ]
    ranked = sorted(items, key=lambda s: -(s["member_count"] or 0))[:20]
    chart = (
        charts.hbars(
            "Members per segment (largest 20 on this page)",
            [
                (f"{s['id']} {s['code'] or s['short_name'] or ''}".strip(), s["member_count"] or 0)
                for s in ranked
            ],
        )
        if counts is not None and items
        else None
    )
    kept = {k: v for k, v in request.query_params.items() if k != "page" and v}
    return render(
        request,
        "segments.html",
        nav="segments",
        segments=items,
        total=total,
        page_no=page_no,
        pages=max(1, -(-total // per_page)),
        page_link=lambda n: "/ui/segments?" + urlencode({**kept, "page": n}),
        search=search,
        member_id=member_id,
        members=_members(db, p),
        chart=chart,
        **_base(request),
    )


@router.get("/ui/segments/{segment_id}")
@page
def segment_page(request: Request, segment_id: int, db: Db, stores: Stores) -> Response:
    p: Principal = request.state.principal
    row = segments.get_segment_row(db, segment_id)
    if not (p.is_admin or row["member_id"] == p.member_id):
        raise NotFound(f"segment {segment_id} not found")
    counts = _member_counts(stores)
    segment = segments.segment_out(row, None if counts is None else counts.get(segment_id, 0))
    recent = []
    for job in stats.segment_jobs(db, row["member_id"], segment_id):
        changes = {
            a: n for a, s, n in stats.parse_segment_log(job["segment_log_lines"]) if s == segment_id
        }
        recent.append(
            {
                "job_id": job["job_id"],
                "phase": job["phase"],
                "source": job["upload_source"],
                "created_on": fmt_ts(job["created_on"]),
                "completed_time": fmt_ts(job["completed_time"]),
                "added": changes.get("added", 0),
                "removed": changes.get("removed", 0),
            }
        )
    return render(
        request, "segment.html", nav="segments", segment=segment, recent=recent, **_base(request)
    )


# --- lookup ----------------------------------------------------------------------------------


@router.get("/ui/lookup")
@page
def lookup_page(request: Request, db: Db) -> Response:
    p: Principal = request.state.principal
    return render(
        request,
        "lookup.html",
        nav="lookup",
        members=_members(db, p),
        **_base(request),
    )


# --- bid requests ----------------------------------------------------------------------------


@router.get("/ui/openrtb")
@page
def openrtb_page(request: Request, db: Db) -> Response:
    p: Principal = request.state.principal
    return render(
        request,
        "openrtb.html",
        nav="openrtb",
        members=_members(db, p),
        reasons=NONE_REASONS,
        **_base(request),
    )


# --- charts ----------------------------------------------------------------------------------


@router.get("/ui/charts")
@page
def charts_page(request: Request, db: Db, settings: AppSettings) -> Response:
    p: Principal = request.state.principal
    member_id = _member_arg(request, p)
    days = settings.history_days
    now = now_s()
    per_day = stats.daily(db, member_id, now, days)
    labels = [datetime.fromtimestamp(d.day, UTC).strftime("%m-%d") for d in per_day]
    pairs_chart = charts.bars(
        f"Pairs applied per day, last {days} days",
        labels,
        [charts.Series("pairs applied", [d.pairs_applied for d in per_day], "s0")],
    )
    kinds = [k for k in stats.ERROR_KINDS if any(d.counters[k] for d in per_day)]
    error_chart = charts.bars(
        f"Rejected share of entries per day, by kind, last {days} days",
        labels,
        [
            charts.Series(k, [d.error_rate(k) for d in per_day], f"s{i + 1}")
            for i, k in enumerate(kinds)
        ],
        percent=True,
    )
    members = stats.per_member(db, now, days) if p.is_admin and member_id is None else []
    member_chart = (
        charts.hbars(
            f"Pairs applied per member, last {days} days",
            [(str(m["member_id"]), m["pairs_applied"]) for m in members[:20]],
        )
        if members
        else None
    )
    return render(
        request,
        "charts.html",
        nav="charts",
        days=days,
        day_rows=[
            (datetime.fromtimestamp(d.day, UTC).strftime("%Y-%m-%d"), d) for d in per_day if d.jobs
        ],
        kinds=kinds,
        kind_classes={k: f"s{i + 1}" for i, k in enumerate(kinds)},
        pairs_chart=pairs_chart,
        error_chart=error_chart,
        member_rows=members,
        member_chart=member_chart,
        member_id=member_id,
        members=_members(db, p),
        **_base(request),
    )


# --- admin -----------------------------------------------------------------------------------


@router.get("/ui/admin")
@page
def admin_page(request: Request, db: Db) -> Response:
    p: Principal = request.state.principal
    if not p.is_admin:
        raise Forbidden("This page is available to admin users only")
    members = accounts.list_members(db)
    member_id = _int_arg(request, "member_id", members[0]["id"] if members else 0)
    config = None
    if member_id and accounts.member_exists(db, member_id):
        cfg = segments.get_config(db, member_id)
        config = segments.config_out(cfg, member_id, segments.get_config_row(db, member_id))
    return render(
        request,
        "admin.html",
        nav="admin",
        members=members,
        users=accounts.list_users(db),
        member_id=member_id,
        config=config,
        **_base(request),
    )


def mount_dashboard(app: FastAPI) -> None:
    """Serve the dashboard from `app`: pages, their static files, and the browser guard."""
    app.add_middleware(BrowserGuard, public_url=app.state.settings.public_url)
    app.include_router(router)
    app.mount("/ui/static", StaticFiles(directory=STATIC_DIR), name="dashboard-static")
