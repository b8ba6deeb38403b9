"""What a processed file yields: the counters and logs of the documented job object."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field

#: Counter names, exactly as in `batch_segment_upload_job`.
COUNTER_NAMES = (
    "num_valid",
    "num_invalid_format",
    "num_valid_user",
    "num_invalid_user",
    "num_invalid_segment",
    "num_invalid_timestamp",
    "num_unauth_segment",
    "num_past_expiration",
    "num_inactive_segment",
    "num_other_error",
)


@dataclass(slots=True)
class Counters:
    num_valid: int = 0
    num_invalid_format: int = 0
    num_valid_user: int = 0
    num_invalid_user: int = 0
    num_invalid_segment: int = 0
    num_invalid_timestamp: int = 0
    num_unauth_segment: int = 0
    num_past_expiration: int = 0
    num_inactive_segment: int = 0
    num_other_error: int = 0


@dataclass(slots=True)
class IngestResult:
    counters: Counters = field(default_factory=Counters)
    error_log_lines: str | None = None
    segment_log_lines: str | None = None
    #: Set when the job ends in phase "error" (corrupt input, too many invalid lines, ...).
    error_code: str | None = None
    error_message: str | None = None
    lines_read: int = 0
    pairs_added: int = 0
    pairs_removed: int = 0
    #: Valid pairs not applied because their user opted out (an extra counter).
    num_opted_out: int = 0
    #: Pairs added and removed per segment (what `segment_log_lines` ranks).
    added_by_segment: Counter[int] = field(default_factory=Counter)
    removed_by_segment: Counter[int] = field(default_factory=Counter)

    def job_fields(self) -> dict[str, object]:
        """The result fields of the job object, with the documented names."""
        fields: dict[str, object] = asdict(self.counters)
        fields["error_log_lines"] = self.error_log_lines
        fields["segment_log_lines"] = self.segment_log_lines
        fields["error_code"] = self.error_code
        return fields
