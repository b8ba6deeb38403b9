"""All settings in one typed place: environment variables `BSS_*`, documented defaults.

Backends are chosen by URL-style settings; the embedded choice (files under the data dir)
is the default, so `bss serve` needs nothing else installed or started.
"""

from __future__ import annotations

import os
import re
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    from bss.identity.graph import Caps

MAX_FILE_BYTES = 536_870_912  # 0.5 GB, the documented file limit
#: Store URL schemes `bss.store.open_store` takes (checked before anything is opened).
STORE_SCHEMES = ("lmdb", "redis", "rediss", "redis+cluster")
_REGION_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BSS_", extra="ignore")

    data_dir: Path = Field(
        Path("./bss-data"),
        description="Where the service keeps its files (SQLite database, membership store, "
        "uploads, error reports, passive folder); created owner-only (0700).",
    )
    database_url: str | None = Field(
        None,
        description="Relational store (jobs, members, users, segments, configs), as a SQLAlchemy "
        "URL (e.g. postgresql+psycopg://user@host/db). Unset: SQLite at "
        "data_dir/bss.db.",
    )
    store_url: str | None = Field(
        None,
        description="Membership store, URL-style: lmdb:///path/to/dir, redis://host:port/db (one "
        "Redis server) or redis+cluster://host:port[,host:port...] (a Redis Cluster, see "
        "docs/scale-out.md). Unset: the embedded LMDB environment data_dir/memberships.lmdb, "
        "shared by every process of the machine.",
    )
    store_regions: str | None = Field(
        None,
        description="Store regions: one membership store per region, as "
        "`us=<store url>;eu=<store url>` (names: lower-case letters, digits, - and _). Every "
        "job is applied to every region; it completes when the local region (local_region) "
        "has it, and the others are caught up from the kept file (docs/scale-out.md). Not "
        "together with store_url.",
    )
    local_region: str | None = Field(
        None,
        description="Store regions: the region this process belongs to (one of store_regions): "
        "jobs complete when it has them, and lookups answer from it unless they name another "
        "with region=.",
    )
    region_retry_max_seconds: float = Field(
        300.0,
        gt=0,
        description="Store regions: longest wait between two attempts to catch a region up "
        "(the first retry comes after 5 s and the wait doubles up to this).",
    )
    store_wait_replicas: int | Literal["attached"] = Field(
        "attached",
        description="Replicas a Redis write must reach (WAIT) before a batch counts as applied. "
        "`attached`: as many as the master has attached now, so that writes go on after a "
        "failover left a shard without a replica (logged as a warning, counted in "
        "bss_store_shards_without_replica, and marked on the jobs written meanwhile); a "
        "number: exactly that many, and jobs wait while fewer are attached. "
        "docs/scale-out.md says what each risks.",
    )
    files_url: str | None = Field(
        None,
        description="Where uploaded files and error reports are kept: file:///path or "
        "s3://bucket/prefix on any S3 endpoint (s3_endpoint_url), shared by every API and "
        "worker process. Unset: file://data_dir.",
    )
    public_url: str | None = Field(
        None,
        description="Base of the upload URLs handed to clients (behind a proxy or another host "
        "name). Unset: the request's own base URL.",
    )

    token_ttl_seconds: int = Field(
        7200,
        description="How long a login token (POST /auth) stays valid.",
    )
    logins_per_window: int = Field(
        10,
        description="Successful logins per user per login window; past it, 429 "
        "LOGIN_RATE_EXCEEDED (reuse the token).",
    )
    login_window_seconds: int = Field(
        300,
        description="The login window for the login and failed-password limits.",
    )
    login_failures_per_client: int = Field(
        20,
        description="Failed password checks per user and client address per login window; "
        "past it, that address gets 429 for that user until the window ends.",
    )
    login_failures_per_user: int = Field(
        500,
        description="Failed password checks per user from all addresses per login window: "
        "a ceiling far above the per-address one, so a spread-out guesser is stopped too but "
        "one address cannot lock a user out. A client holding the `bss_device` cookie of an "
        "earlier successful login (browsers, `bss login`) is held by the per-address limit "
        "only, so strangers reaching the ceiling do not lock out the user's own clients; "
        "unknown usernames cost the same argon2 check as known ones.",
    )
    metrics_token: str = Field(
        "",
        description="When set, GET /metrics answers only requests with `Authorization: Bearer "
        "<this token>` (Prometheus: `authorization: {credentials: <token>}` in the scrape "
        "config); empty: /metrics is open to anyone who can reach the port.",
    )
    trusted_proxies: str = Field(
        "",
        description="Comma-separated addresses or networks (CIDR) of reverse proxies whose "
        "X-Forwarded-For is believed for the client address; empty: the peer address is used.",
    )
    upload_url_ttl_seconds: int = Field(
        300,
        description="An upload must start within this long after its URL was issued.",
    )
    max_file_bytes: int = Field(
        MAX_FILE_BYTES,
        description="Largest file one upload may send (the documented 0.5 GB); larger: 413 "
        "FILESIZE_LIMIT_EXCEEDED.",
    )
    max_decompressed_bytes: int = Field(
        10 * MAX_FILE_BYTES,
        description="Bytes a compressed file may expand to (gzip bomb guard): 10 times the file "
        "limit.",
    )
    max_upload_seconds: int = Field(
        5400,
        description="Longest an upload may take (90 minutes); longer: 408 'Maximum upload time "
        "exceeded'.",
    )
    upload_idle_seconds: int = Field(
        60,
        description="An upload that sends no bytes for this long is failed and its connection "
        "closed (a stalled client cannot hold a concurrent-upload slot).",
    )
    request_head_timeout: float = Field(
        10.0,
        gt=0,
        description="Seconds a client may take to send a request's head (request line and "
        "headers), counted from the connection's opening or the first byte of a later request "
        "on it; past it the connection is closed (a partial head gets 408 first) and "
        "bss_request_head_timeouts_total counts it. Bodies are bounded by "
        "upload_idle_seconds instead.",
    )
    max_pending_jobs: int = Field(
        200,
        description="Jobs of one member waiting to be processed; past it, uploads get 429 "
        "RATE_LIMIT_EXCEEDED.",
    )
    requests_per_minute: int = Field(
        1000,
        description="API requests per member per minute; past it, 429 RATE_EXCEEDED with "
        "Retry-After.",
    )
    history_days: int = Field(
        30,
        description="Days a job stays in the job history.",
    )
    file_retention_days: int = Field(
        3,
        description="Days an uploaded file is kept after its job.",
    )
    chunk_bytes: int = Field(
        4 << 20,
        description="Decompressed input the engine parses at once; bounds memory per chunk.",
    )
    workers: int = Field(
        1,
        description="Worker threads processing jobs in each process.",
    )
    worker_poll_seconds: float = Field(
        0.5,
        description="How often an idle worker looks for queued jobs.",
    )
    job_lease_seconds: int = Field(
        60,
        description="A worker that has not renewed its claim on a job for this long is presumed "
        "dead; another one takes the job.",
    )
    job_max_attempts: int = Field(
        5,
        ge=1,
        description="Runs a job may fail by its own fault (an unexpected error processing its "
        "file, or 3 workers in a row lost while running it without getting further) before it "
        "ends in error. Failures of the store, database or files store never count: the job "
        "waits for them (job_infra_wait_max).",
    )
    job_infra_wait_max: int = Field(
        86400,
        ge=1,
        description="Seconds a queued job waits, retrying, while the store, database or files "
        "store is unavailable before it ends as `infrastructure-timeout` (its file kept for "
        "another upload). The job shows why it waits in its waiting_reason field.",
    )
    sweep_seconds: int = Field(
        3600,
        description="How often the retention sweep runs (old files, job history, expired "
        "memberships, tokens).",
    )
    api_threads: int = Field(
        8,
        description="Threads per API process for blocking request work (database and store "
        "reads); requests beyond it wait their turn on the event loop.",
    )
    processes: int = Field(
        1,
        description="API processes `bss serve` runs on its one port (each with BSS_WORKERS "
        "worker threads); limits, throttles and upload slots are shared through the database.",
    )
    lease_seconds: float = Field(
        15,
        description="Term of a process's leases in the database (its liveness, and the sweeper "
        "and passive-scanner roles, which one process per machine holds), renewed every third "
        "of it. Uploads into a process whose lease lapsed are failed.",
    )

    s3_endpoint_url: str | None = Field(
        None,
        description="S3-compatible endpoint for passive upload buckets and for files_url s3://... "
        "Unset: AWS itself.",
    )
    passive_regions: str = Field(
        "us-east-2,us-west-2,eu-north-1,eu-west-1",
        description="Passive upload: comma-separated regions whose buckets "
        "bss-<member_id>-<region> are scanned.",
    )
    passive_scan_seconds: int = Field(
        300,
        description="Passive upload: how often submitted/ folders and buckets are scanned.",
    )
    passive_min_age_seconds: int = Field(
        60,
        description="Passive upload: a submitted file younger than this is presumed still being "
        "written.",
    )
    passive_s3_enabled: bool = Field(
        False,
        description="Passive upload: scan S3 buckets (needs credentials through boto3's chain); "
        "the local folder data_dir/passive is always scanned.",
    )
    passive_lease_seconds: int = Field(
        900,
        description="Passive upload: a scanner that has not renewed its claim on a file for this "
        "long is presumed dead, and another scanner finishes its work (renewed every "
        "quarter of this).",
    )
    passive_poll_seconds: float = Field(
        2.0,
        description="Passive upload: how often a scanner checks the jobs of the files it started "
        "(between scans).",
    )
    passive_max_inflight_per_member: int = Field(
        4,
        description="Passive upload: files of one member a scanner has in flight at once (oldest "
        "first); the rest wait, so one member's flood cannot starve others.",
    )

    rt_posts_per_second: int = Field(
        100,
        description="Real-time segment API (POST /rt-segment): posts per second per member (per "
        "process); more is HTTP 429 RATE_EXCEEDED.",
    )
    rt_users_per_second: int = Field(
        1000,
        description="Real-time segment API: users per second per member (per process) summed "
        "over posts; a post that would pass it is refused whole with HTTP 429 (nothing applied), "
        "so that the client can retry it.",
    )
    rt_max_users_per_post: int = Field(
        1000,
        description="Real-time segment API: users one post may carry; the rest are skipped with "
        "a warning each.",
    )
    rt_max_segments_per_user: int = Field(
        100,
        description="Real-time segment API: SEG blocks per user in one post; the rest are "
        "skipped with a warning each.",
    )
    rt_max_post_bytes: int = Field(
        1 << 20,
        description="Real-time segment API: largest body of one post, in bytes; a larger one is "
        "refused whole with HTTP 413.",
    )
    rt_idempotency_seconds: int = Field(
        86400,
        description="Real-time segment API: how long an Idempotency-Key is remembered (its post "
        "answered again, not re-applied).",
    )

    optout_secret: str | None = Field(
        None,
        description="Opt-outs: the HMAC key the suppression list keeps IDs under (never in the "
        "clear). Unset: a random key made once and kept in the database; set it to keep the "
        "key out of the database (the same value on every host).",
    )

    link_ttl_days: int = Field(
        180,
        ge=1,
        le=3650,
        description="Identity graph: days a link lives after it was asserted (fixed when the "
        "assertion is first applied: a job's recorded time or a post's time plus this); "
        "asserting it again refreshes it.",
    )
    link_max_hops: int = Field(
        2,
        ge=0,
        le=5,
        description="Identity graph: hops a read expands through (related=true and the "
        "in-process expansion): 1 takes an ID's own links only.",
    )
    links_per_id: int = Field(
        25,
        ge=1,
        le=1000,
        description="Identity graph: links an expansion follows from each ID, its most "
        "recently asserted live ones.",
    )
    cluster_max_ids: int = Field(
        50,
        ge=1,
        le=1000,
        description="Identity graph: IDs one expansion reaches at most, the queried ones included.",
    )

    store_allow_empty: bool = Field(
        False,
        description="Start with a new, empty embedded store (lmdb) although its data.mdb is "
        "missing and the job database lists completed jobs that wrote memberships; without "
        "it, start-up stops with one line naming the file (restore it from a backup).",
    )

    uid_cookie: str = Field(
        "uuid2",
        pattern=r"^[A-Za-z0-9_-]{1,64}$",
        description="ID sync: name of the service's user-ID cookie (GET /getuid, /mapuid, "
        "/optout).",
    )
    sync_redirect_hosts: str = Field(
        "",
        description="ID sync: host names (comma-separated) GET /getuid may redirect to; any "
        "other is refused with 400 (no open redirect). Empty: getuid redirects nowhere.",
    )
    sync_uid_per_minute: int = Field(
        10,
        ge=1,
        description="ID sync: GET /mapuid calls per minute per browser uid; more are answered "
        "429 and store nothing.",
    )
    sync_member_per_minute: int = Field(
        6000,
        ge=1,
        description="ID sync: GET /mapuid calls per minute per member; more are answered 429 "
        "and store nothing.",
    )

    webhook_allowed_networks: str = Field(
        "",
        description="Completion webhooks: networks (CIDR, comma-separated) webhook targets may "
        "be in although they are not globally routable (private, loopback, link-local, shared "
        "100.64.0.0/10, reserved; IPv6 forms carrying such an IPv4 address count as it); every "
        "other such address is refused.",
    )
    webhook_first_retry_seconds: float = Field(
        10.0,
        description="Completion webhooks: delay before the first retry of a failed delivery; it "
        "doubles per attempt up to webhook_max_retry_seconds, until "
        "webhook_retry_window_seconds after the first attempt.",
    )
    webhook_max_retry_seconds: float = Field(
        3600.0, description="Completion webhooks: longest delay between two retries."
    )
    webhook_retry_window_seconds: float = Field(
        86400.0,
        description="Completion webhooks: retries stop this long after the first attempt.",
    )
    webhook_timeout_seconds: float = Field(
        10.0,
        gt=0,
        description="Completion webhooks: seconds one attempt may take in all (connecting, "
        "sending and the answer's head, however slowly the receiver sends them); the answer's "
        "body is never read.",
    )
    webhook_threads: int = Field(
        2,
        description="Completion webhooks: threads per process that claim due deliveries (each "
        "sends up to webhook_in_flight at once, one per member).",
    )
    webhook_in_flight: int = Field(
        16,
        ge=1,
        le=1000,
        description="Completion webhooks: deliveries each delivery thread sends at once, each "
        "to a different member, so a slow receiver delays no other member's deliveries unless "
        "this many receivers are slow at the same time.",
    )
    webhook_poll_seconds: float = Field(
        1.0,
        description="Completion webhooks: how often an idle delivery thread looks for due "
        "deliveries.",
    )

    tcf_vendor_id: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="The service's IAB TCF v2 vendor id: where GDPR applies, targeting answers and "
        "ID syncs need a TC string giving this vendor consent (and purposes 1, 3 and 4). "
        "Unset: requests where GDPR applies get no segments and no sync.",
    )

    openrtb_data_id: str = Field(
        "bss",
        min_length=1,
        max_length=100,
        description="OpenRTB answers: the id of the user.data[] Data objects this service adds "
        "(a merge replaces the posted entries with this id).",
    )
    openrtb_data_name: str = Field(
        "BSS",
        min_length=1,
        max_length=100,
        description="OpenRTB answers: the name of the Data objects this service adds.",
    )
    openrtb_max_request_bytes: int = Field(
        1_048_576,
        ge=1024,
        description="OpenRTB answers: largest bid request POST /openrtb/user-data takes (413 "
        "beyond).",
    )

    admin_username: str | None = Field(
        None,
        description="First start: the admin user to create (with BSS_ADMIN_PASSWORD).",
    )
    admin_password: str | None = Field(
        None,
        description="First start: the admin's password. Ignored, with a warning, once that user "
        "exists.",
    )

    @model_validator(mode="after")
    def _check_regions(self) -> Settings:
        if self.store_regions is None:
            if self.local_region is not None:
                raise ValueError("BSS_LOCAL_REGION is set but BSS_STORE_REGIONS is not")
            return self
        if self.store_url is not None:
            raise ValueError(
                "BSS_STORE_REGIONS and BSS_STORE_URL are both set: name the local store as "
                "one of the regions (BSS_LOCAL_REGION) and unset BSS_STORE_URL"
            )
        regions = self.regions
        if self.local_region not in regions:
            raise ValueError(
                f"BSS_LOCAL_REGION must be one of the regions of BSS_STORE_REGIONS "
                f"({', '.join(regions)}), not {self.local_region!r}"
            )
        return self

    @cached_property
    def sync_hosts(self) -> tuple[str, ...]:
        """BSS_SYNC_REDIRECT_HOSTS as lower-case host names."""
        return tuple(h.strip().lower() for h in self.sync_redirect_hosts.split(",") if h.strip())

    @cached_property
    def graph_caps(self) -> Caps:
        """The expansion bounds (link_max_hops, links_per_id, cluster_max_ids)."""
        from bss.identity.graph import Caps

        return Caps(self.link_max_hops, self.links_per_id, self.cluster_max_ids)

    @cached_property
    def regions(self) -> dict[str, str]:
        """Region name -> store URL, in the order given; empty without store regions."""
        if self.store_regions is None:
            return {}
        out: dict[str, str] = {}
        for part in filter(None, (p.strip() for p in self.store_regions.split(";"))):
            name, sep, url = (x.strip() for x in part.partition("="))
            if not sep or not _REGION_NAME.match(name) or not url:
                raise ValueError(
                    f"BSS_STORE_REGIONS: {part!r} is not `name=<store url>` (names: lower-case "
                    "letters, digits, - and _)"
                )
            if name in out:
                raise ValueError(f"BSS_STORE_REGIONS names region {name!r} twice")
            if url.partition("://")[0] not in STORE_SCHEMES or "://" not in url:
                raise ValueError(
                    f"BSS_STORE_REGIONS: region {name!r} has no store URL ({url!r}): use "
                    "lmdb:///path/to/dir, redis://host:port/db or "
                    "redis+cluster://host:port[,host:port...]"
                )
            out[name] = url
        if len(out) < 2:
            raise ValueError("BSS_STORE_REGIONS names fewer than two regions")
        return out

    def make_data_dir(self) -> Path:
        """Create the data dir owner-only (0700) and have every file and folder this process
        creates from now on be owner-only too (umask 077: 0600 / 0700): bss.db holds password
        hashes, and the stores, uploads and error reports hold members' data."""
        os.umask(0o077)
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.data_dir.chmod(0o700)  # also a data dir made by an older version or by hand
        return self.data_dir

    @cached_property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'bss.db').resolve()}"

    @cached_property
    def resolved_store_url(self) -> str:
        """The membership store this process reads and completes jobs in (with store
        regions: the local region's)."""
        if self.local_region is not None:
            return self.regions[self.local_region]
        return self.store_url or f"lmdb://{(self.data_dir / 'memberships.lmdb').resolve()}"

    @cached_property
    def resolved_files_url(self) -> str:
        return self.files_url or f"file://{self.data_dir.resolve()}"
