"""Process-wide counters for /metrics, rendered in the Prometheus text format by hand."""

from __future__ import annotations

import hmac
import threading
from collections import defaultdict


class Counters:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, float] = defaultdict(float)

    def inc(self, name: str, amount: float = 1.0) -> None:
        with self._lock:
            self._values[name] += amount

    def set(self, name: str, value: float) -> None:
        """A gauge: the value now."""
        with self._lock:
            self._values[name] = value

    def snapshot(self) -> dict[str, float]:
        with self._lock:
            return dict(self._values)


#: bytes_uploaded_total, pairs_applied_total, jobs_finished_total{phase}, http_requests_total
COUNTERS = Counters()

HELP = {
    "bss_bytes_uploaded_total": ("counter", "Bytes received by completed uploads (this process)."),
    "bss_pairs_applied_total": (
        "counter",
        "User/segment pairs written to the store (this process).",
    ),
    "bss_lines_processed_total": ("counter", "Input lines read by the engine (this process)."),
    "bss_jobs_finished_total": ("counter", "Jobs finished by workers of this process."),
    "bss_http_requests_total": ("counter", "HTTP requests served by this process."),
    "bss_store_shards_without_replica": (
        "gauge",
        "Redis masters this process last wrote to that had no replica attached "
        "(BSS_STORE_WAIT_REPLICAS=attached wrote to them unconfirmed).",
    ),
    "bss_rt_pairs_applied_total": (
        "counter",
        "User/segment pairs written by POST /rt-segment (this process).",
    ),
    "bss_request_head_timeouts_total": (
        "counter",
        "Connections closed because a request head took longer than BSS_REQUEST_HEAD_TIMEOUT "
        "(this process).",
    ),
    "bss_request_heads_too_large_total": (
        "counter",
        "Connections closed because a request head passed 1 MiB (this process).",
    ),
}


def render(jobs_by_phase: dict[str, int]) -> str:
    lines = [
        "# HELP bss_jobs Jobs currently in each phase (database, all processes).",
        "# TYPE bss_jobs gauge",
    ]
    for phase, n in sorted(jobs_by_phase.items()):
        lines.append(f'bss_jobs{{phase="{phase}"}} {n}')
    snap = COUNTERS.snapshot()
    families: dict[str, list[tuple[str, float]]] = defaultdict(list)
    for key, value in snap.items():
        family = key.split("{", 1)[0]
        families[family].append((key, value))
    for family in sorted(set(HELP) | set(families)):
        kind, text = HELP.get(family, ("counter", family))
        lines.append(f"# HELP {family} {text}")
        lines.append(f"# TYPE {family} {kind}")
        entries = families.get(family) or [(family, 0.0)]
        for key, value in sorted(entries):
            lines.append(f"{key} {int(value) if float(value).is_integer() else value}")
    return "\n".join(lines) + "\n"


def scrape_allowed(metrics_token: str, authorization: str | None) -> bool:
    """Whether a /metrics request may read the figures: any request when no token is set,
    else one that sends `Authorization: Bearer <token>`."""
    if not metrics_token:
        return True
    scheme, _, sent = (authorization or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(sent.strip(), metrics_token)
