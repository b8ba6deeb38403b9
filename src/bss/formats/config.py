"""A member's file format configuration: the documented `batch_segment_upload_config` object.

Field names follow the documented object to the letter so that a config posted by an
existing client validates here unchanged. Every rule of the legacy format seed is checked
here, once, with a message that names the rule.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

#: Characters the legacy format forbids as separators.
DISALLOWED_SEPARATORS = frozenset("[](){}$\\/|?*+-")
#: Line terminators can never separate fields inside a line.
_LINE_BREAKS = frozenset("\r\n")

SEGMENT_FIELD_NAMES = ("SEG_ID", "SEG_CODE", "EXPIRATION", "TIMESTAMP", "VALUE", "MEMBER_ID")
MAX_ERROR_LOG_LINES = 999
DEFAULT_ERROR_LOG_LINES = 200
DEFAULT_SEGMENT_LOG_LINES = 200
#: The member's completion webhook (bss.webhooks): kept by a config POST that does not name
#: them, since a member may set them itself and an admin replacing the format config should
#: not silently stop its notifications.
WEBHOOK_FIELDS = ("webhook_url", "webhook_secret")


class ConfigError(ValueError):
    """An invalid member configuration; the message names the rule that was broken."""


#: Member ids are 32-bit in every table.
MAX_MEMBER_ID = 2**31 - 1
SEPARATOR_NAMES = tuple(f"separator_{i}" for i in range(1, 6))
#: The one pair of separators that may be the same character.
_MAY_BE_EQUAL = frozenset({"separator_1", "separator_3"})


class SegmentOwnerAccess(BaseModel):
    model_config = ConfigDict(extra="ignore")
    segment_owner_member_id: int = Field(ge=1, le=MAX_MEMBER_ID)


def parse_segment_fields(value: Any) -> list[str]:
    """Accept the documented string form "[SEG_ID,EXPIRATION]" or a JSON list of names."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("[") and '"' in text:
            try:
                value = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"segment_fields is not a valid list: {value!r}") from exc
        else:
            if not (text.startswith("[") and text.endswith("]")):
                raise ConfigError(
                    'segment_fields must look like "[SEG_ID,EXPIRATION]" or be a JSON list'
                )
            inner = text[1:-1].strip()
            value = [part.strip() for part in inner.split(",")] if inner else []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError("segment_fields must be a list of field names")
    fields = [v.strip().upper() for v in value]
    unknown = [f for f in fields if f not in SEGMENT_FIELD_NAMES]
    if unknown:
        raise ConfigError(
            f"segment_fields has unknown field(s) {unknown}; allowed: {list(SEGMENT_FIELD_NAMES)}"
        )
    if len(set(fields)) != len(fields):
        raise ConfigError("segment_fields lists a field more than once")
    has_id, has_code = "SEG_ID" in fields, "SEG_CODE" in fields
    if has_id == has_code:
        raise ConfigError("segment_fields must include SEG_ID or SEG_CODE, but not both")
    if "MEMBER_ID" in fields and not has_code:
        raise ConfigError("segment_fields may include MEMBER_ID only together with SEG_CODE")
    return fields


class BatchSegmentConfig(BaseModel):
    """`batch_segment_upload_config`; defaults are the documented ones."""

    model_config = ConfigDict(extra="ignore", validate_assignment=True)

    id: int | None = None
    member_id: int | None = None
    separator_1: str = ","
    separator_2: str | None = ";"
    separator_3: str | None = ":"
    separator_4: str | None = "\t"
    separator_5: str | None = "^"
    segment_fields: list[str] = Field(default_factory=lambda: ["SEG_ID", "EXPIRATION"])
    default_expiration: int = 0
    num_error_log_lines: int = DEFAULT_ERROR_LOG_LINES
    num_invalid_before_error: int | None = None
    daily_byte_limit: int | None = None
    hourly_byte_limit: int | None = None
    daily_num_lines_limit: int | None = None
    hourly_num_lines_limit: int | None = None
    max_concurrent_uploads: int = 1
    #: The legacy format seed spells it `uses_external_uids`; both are accepted.
    use_external_uids: bool = Field(
        False, validation_alias=AliasChoices("use_external_uids", "uses_external_uids")
    )
    external_member_uid: int | None = Field(None, ge=1, le=MAX_MEMBER_ID)
    member_segment_access: list[SegmentOwnerAccess] = Field(default_factory=list)
    default_domain: str | None = None
    use_specific_geo: bool | None = None
    #: Completion webhook (bss.webhooks): where finished jobs are POSTed, and the HMAC key.
    #: The secret is write-only: never returned by the API.
    webhook_url: str | None = None
    webhook_secret: str | None = None
    #: A replace-mode upload ends in error, removing nothing, when it would remove more than
    #: this share of a segment's members (unless the upload says force=true).
    max_replace_removal_fraction: float = Field(0.5, ge=0.0, le=1.0)
    created_on: str | None = None
    last_modified: str | None = None

    @field_validator("segment_fields", mode="before")
    @classmethod
    def _segment_fields(cls, value: Any) -> list[str]:
        return parse_segment_fields(value)

    @field_validator("separator_2", "separator_3", "separator_4", "separator_5", mode="before")
    @classmethod
    def _empty_separator_is_unset(cls, value: Any) -> Any:
        return None if value == "" else value

    @field_validator("webhook_url")
    @classmethod
    def _webhook_url(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname or len(value) > 2048:
            raise ConfigError("webhook_url must be an http:// or https:// URL with a host")
        return value

    @field_validator("num_error_log_lines")
    @classmethod
    def _error_lines(cls, value: int) -> int:
        if not 0 <= value <= MAX_ERROR_LOG_LINES:
            raise ConfigError(f"num_error_log_lines must be between 0 and {MAX_ERROR_LOG_LINES}")
        return value

    @field_validator("default_expiration")
    @classmethod
    def _default_expiration(cls, value: int) -> int:
        if value < -1:
            raise ConfigError("default_expiration must be -1, 0 or a number of minutes")
        return value

    @field_validator(
        "num_invalid_before_error",
        "daily_byte_limit",
        "hourly_byte_limit",
        "daily_num_lines_limit",
        "hourly_num_lines_limit",
    )
    @classmethod
    def _non_negative(cls, value: int | None) -> int | None:
        if value is not None and value < 0:
            raise ConfigError("limits must not be negative")
        return value

    @field_validator("max_concurrent_uploads")
    @classmethod
    def _concurrency(cls, value: int) -> int:
        if value < 1:
            raise ConfigError("max_concurrent_uploads must be at least 1")
        return value

    @model_validator(mode="after")
    def _separators(self) -> BatchSegmentConfig:
        self._drop_clashing_defaults()
        named = {name: getattr(self, name) for name in SEPARATOR_NAMES}
        for name, sep in named.items():
            if sep is None:
                continue
            if len(sep) != 1:
                raise ConfigError(f"{name} must be exactly one character, got {sep!r}")
            if sep in DISALLOWED_SEPARATORS:
                raise ConfigError(
                    f"{name} {sep!r} is not allowed: separators may not be any of "
                    "[ ] ( ) { } $ \\ / | ? * + -"
                )
            if sep in _LINE_BREAKS:
                raise ConfigError(f"{name} may not be a line break")
            if ord(sep) > 0xFF:
                raise ConfigError(f"{name} must be a Latin-1 character")
        used = [(n, s) for n, s in named.items() if s is not None]
        for i, (name_a, sep_a) in enumerate(used):
            for name_b, sep_b in used[i + 1 :]:
                if sep_a == sep_b and {name_a, name_b} != _MAY_BE_EQUAL:
                    raise ConfigError(
                        f"{name_a} and {name_b} are both {sep_a!r}: separators must all differ, "
                        "except that separator_1 may equal separator_3"
                    )
        if len(self.segment_fields) > 1 and self.separator_3 is None:
            raise ConfigError("separator_3 is required when the SEG block has more than one field")
        return self

    def _drop_clashing_defaults(self) -> None:
        """A separator the member did not set takes its default only where that does not clash
        with one the member set (seed 004, example 3: separator_1 and separator_3 TAB make the
        default separator_4 TAB unusable); otherwise it stays unset. separator_1 is required
        and keeps its default, so a clash with it is still reported."""
        chosen = {n: getattr(self, n) for n in SEPARATOR_NAMES if n in self.model_fields_set}
        chosen.setdefault("separator_1", self.separator_1)
        for name in SEPARATOR_NAMES[1:]:
            if name in chosen:
                continue
            default = getattr(self, name)
            if any(
                sep == default and {name, other} != _MAY_BE_EQUAL for other, sep in chosen.items()
            ):
                # Not an assignment: that would validate the model again; and the field stays
                # out of model_fields_set, so it is resolved afresh whenever the config is.
                self.__dict__[name] = None

    def member_settings(self) -> dict[str, Any]:
        """The fields the member set (what is stored): unset ones keep following the
        defaults, and a later PUT merges over exactly these."""
        return self.model_dump(mode="json", exclude_unset=True)

    @model_validator(mode="after")
    def _webhook_needs_secret(self) -> BatchSegmentConfig:
        if self.webhook_url and not self.webhook_secret:
            raise ConfigError("webhook_url needs a webhook_secret (deliveries are signed with it)")
        return self

    def segment_fields_text(self) -> str:
        """The documented string form, e.g. "[SEG_ID,EXPIRATION]"."""
        return "[" + ",".join(self.segment_fields) + "]"

    def authorized_owners(self, member_id: int) -> frozenset[int]:
        """Members whose segments this member may write: itself plus member_segment_access."""
        return frozenset(
            {member_id, *(a.segment_owner_member_id for a in self.member_segment_access)}
        )


def load_config(data: Any) -> BatchSegmentConfig:
    """Validate a config given as a dict (optionally wrapped in `batch_segment_upload_config`)."""
    if isinstance(data, dict) and "batch_segment_upload_config" in data:
        data = data["batch_segment_upload_config"]
    if isinstance(data, list):  # the API family sometimes wraps one object in an array
        if len(data) != 1:
            raise ConfigError("expected exactly one batch_segment_upload_config object")
        data = data[0]
    try:
        return BatchSegmentConfig.model_validate(data)
    except ConfigError:
        raise
    except ValueError as exc:  # pydantic.ValidationError wraps our ConfigError messages
        raise ConfigError(_first_message(exc)) from exc


def _first_message(exc: ValueError) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        items = errors()
        if items:
            item = items[0]
            where = ".".join(str(p) for p in item.get("loc", ()))
            msg = str(item.get("msg", exc))
            msg = msg.removeprefix("Value error, ")
            return f"{where}: {msg}" if where else msg
    return str(exc)
