"""All settings in one typed place: environment variables `BSS_*`, documented defaults.

Backends are chosen by URL-style settings; the embedded choice (files under the data dir)
is the default, so `bss serve` needs nothing else installed or started.
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

MAX_FILE_BYTES = 536_870_912  # 0.5 GB, the documented file limit


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BSS_", extra="ignore")

    data_dir: Path = Path("./bss-data")
    #: Relational store (jobs, members, users, segments, configs). Default: SQLite in data_dir.
    database_url: str | None = None
    #: Membership store, URL-style: lmdb:///path/to/dir. Default: the embedded LMDB
    #: environment data_dir/memberships.lmdb, shared by every process of the machine.
    store_url: str | None = None
    public_url: str | None = None

    token_ttl_seconds: int = 7200
    logins_per_window: int = 10
    login_window_seconds: int = 300
    login_failures_per_client: int = Field(
        20,
        description="Failed password checks per user and client address per login window; "
        "past it, that address gets 429 for that user until the window ends.",
    )
    login_failures_per_user: int = Field(
        500,
        description="Failed password checks per user from all addresses per login window: "
        "a ceiling far above the per-address one, so a spread-out guesser is stopped too but "
        "one address cannot lock a user out.",
    )
    trusted_proxies: str = Field(
        "",
        description="Comma-separated addresses or networks (CIDR) of reverse proxies whose "
        "X-Forwarded-For is believed for the client address; empty: the peer address is used.",
    )
    upload_url_ttl_seconds: int = 300
    max_file_bytes: int = MAX_FILE_BYTES
    #: Decompressed bytes a file may expand to (gzip bomb guard): 10 x the file limit.
    max_decompressed_bytes: int = 10 * MAX_FILE_BYTES
    max_upload_seconds: int = 5400
    upload_idle_seconds: int = Field(
        60,
        description="An upload that sends no bytes for this long is failed and its connection "
        "closed (a stalled client cannot hold a concurrent-upload slot).",
    )
    max_pending_jobs: int = 200
    requests_per_minute: int = 1000
    history_days: int = 30
    file_retention_days: int = 3
    #: How much decompressed input the engine parses at once; bounds memory per chunk.
    chunk_bytes: int = 4 << 20
    workers: int = 1
    worker_poll_seconds: float = 0.5
    #: A worker that has not renewed its claim on a job for this long is presumed dead.
    job_lease_seconds: int = 60
    sweep_seconds: int = 3600
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

    #: Passive upload: S3-compatible endpoint (unset: AWS itself), regions scanned, cadence.
    s3_endpoint_url: str | None = None
    passive_regions: str = "us-east-2,us-west-2,eu-north-1,eu-west-1"
    passive_scan_seconds: int = 300
    #: A submitted file younger than this is presumed still being written.
    passive_min_age_seconds: int = 60
    #: Scan S3 buckets (needs credentials through boto3's chain); the local folder is always on.
    passive_s3_enabled: bool = False
    #: A scanner that has not renewed its claim on a passive file for this long is presumed
    #: dead, and another scanner finishes its work (renewed every quarter of this).
    passive_lease_seconds: int = 900
    #: How often a scanner checks the jobs of the files it started (between scans).
    passive_poll_seconds: float = 2.0
    #: Files of one member a scanner has in flight at once (oldest first); the rest wait,
    #: and are picked up as soon as one finishes, so one member's flood cannot starve others.
    passive_max_inflight_per_member: int = 4

    #: Real-time segment API (POST /rt-segment), the documented Instant Audience limits.
    #: Posts per second per member (per process); more is HTTP 429 RATE_EXCEEDED.
    rt_posts_per_second: int = 100
    #: Users per second per member (per process) summed over posts; a post that would pass it
    #: is refused whole with HTTP 429 (nothing applied), so that the client can retry it.
    rt_users_per_second: int = 1000
    #: Users one post may carry; the rest are skipped with a warning each.
    rt_max_users_per_post: int = 1000
    #: SEG blocks per user in one post; the rest are skipped with a warning each.
    rt_max_segments_per_user: int = 100
    #: Largest body of one post, in bytes; a larger one is refused whole with HTTP 413.
    rt_max_post_bytes: int = 1 << 20
    #: How long an Idempotency-Key is remembered (its post answered again, not re-applied).
    rt_idempotency_seconds: int = 86400

    #: Completion webhooks. Networks (CIDR, comma-separated) webhook targets may be in although
    #: they are private, loopback or link-local; everything else in those ranges is refused.
    webhook_allowed_networks: str = ""
    #: Delay before the first retry of a failed delivery; it doubles per attempt up to
    #: webhook_max_retry_seconds, until webhook_retry_window_seconds after the first attempt.
    webhook_first_retry_seconds: float = 10.0
    webhook_max_retry_seconds: float = 3600.0
    webhook_retry_window_seconds: float = 86400.0
    #: Seconds a receiver has to answer one delivery (connect and response).
    webhook_timeout_seconds: float = 10.0
    #: Delivery threads per process (each delivers to one member at a time).
    webhook_threads: int = 2
    #: How often an idle delivery thread looks for due deliveries.
    webhook_poll_seconds: float = 1.0

    admin_username: str | None = None
    admin_password: str | None = None

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
        return self.store_url or f"lmdb://{(self.data_dir / 'memberships.lmdb').resolve()}"
