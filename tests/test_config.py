"""The member format configuration: every documented rule, with a message naming it."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bss.formats.config import (
    DISALLOWED_SEPARATORS,
    BatchSegmentConfig,
    ConfigError,
    load_config,
    parse_segment_fields,
)


def test_default_config_is_the_documented_one() -> None:
    cfg = load_config({})
    assert (
        cfg.separator_1,
        cfg.separator_2,
        cfg.separator_3,
        cfg.separator_4,
        cfg.separator_5,
    ) == (
        ",",
        ";",
        ":",
        "\t",
        "^",
    )
    assert cfg.segment_fields == ["SEG_ID", "EXPIRATION"]
    assert cfg.default_expiration == 0
    assert cfg.num_error_log_lines == 200
    assert cfg.segment_fields_text() == "[SEG_ID,EXPIRATION]"


def test_wrapped_and_list_forms_are_accepted() -> None:
    cfg = load_config(
        {"batch_segment_upload_config": {"segment_fields": '["SEG_CODE", "MEMBER_ID"]'}}
    )
    assert cfg.segment_fields == ["SEG_CODE", "MEMBER_ID"]
    cfg = load_config({"segment_fields": ["timestamp", "seg_id", "value", "expiration"]})
    assert cfg.segment_fields == ["TIMESTAMP", "SEG_ID", "VALUE", "EXPIRATION"]
    assert parse_segment_fields("[SEG_ID, EXPIRATION, VALUE]") == ["SEG_ID", "EXPIRATION", "VALUE"]


@pytest.mark.parametrize(
    ("fields", "rule"),
    [
        ("[EXPIRATION]", "SEG_ID or SEG_CODE"),
        ("[SEG_ID,SEG_CODE]", "SEG_ID or SEG_CODE, but not both"),
        ("[SEG_ID,MEMBER_ID]", "MEMBER_ID only together with SEG_CODE"),
        ("[SEG_ID,SEG_ID]", "more than once"),
        ("[SEG_ID,COLOUR]", "unknown field"),
        ("SEG_ID,EXPIRATION", "must look like"),
    ],
)
def test_segment_fields_rules(fields: str, rule: str) -> None:
    with pytest.raises(ConfigError, match=rule):
        load_config({"segment_fields": fields})


@pytest.mark.parametrize("sep", sorted(DISALLOWED_SEPARATORS))
def test_disallowed_separator_characters(sep: str) -> None:
    with pytest.raises(ConfigError, match="not allowed"):
        load_config({"separator_2": sep})


def test_separator_rules() -> None:
    with pytest.raises(ConfigError, match="exactly one character"):
        load_config({"separator_1": ",,"})
    with pytest.raises(ConfigError, match="separator_2 and separator_4"):
        load_config({"separator_2": "\t", "separator_4": "\t"})
    with pytest.raises(ConfigError, match="must all differ"):
        load_config({"separator_1": ";", "separator_2": ";"})
    # separator_1 is required: its default still clashes with a separator set to ','.
    with pytest.raises(ConfigError, match="separator_1 and separator_2"):
        load_config({"separator_2": ","})
    # A default the member did not set yields where it would clash (issue 9.2).
    assert load_config({"separator_2": "\t"}).separator_4 is None
    assert load_config({"separator_1": ";"}).separator_2 is None
    # separator_1 may equal separator_3 (seed example 3).
    cfg = load_config({"separator_1": "\t", "separator_3": "\t", "separator_4": None})
    assert cfg.separator_1 == cfg.separator_3 == "\t"
    with pytest.raises(ConfigError, match="separator_3 is required"):
        load_config({"separator_3": None})
    assert load_config({"separator_3": None, "segment_fields": "[SEG_ID]"}).separator_3 is None


def test_numeric_rules() -> None:
    with pytest.raises(ConfigError, match="num_error_log_lines"):
        load_config({"num_error_log_lines": 1000})
    assert load_config({"num_error_log_lines": 999}).num_error_log_lines == 999
    with pytest.raises(ConfigError, match="default_expiration"):
        load_config({"default_expiration": -5})


def test_authorized_owners() -> None:
    cfg = load_config({"member_segment_access": [{"segment_owner_member_id": 7}]})
    assert cfg.authorized_owners(958) == {958, 7}


@given(st.lists(st.characters(min_codepoint=32, max_codepoint=255), min_size=5, max_size=5))
def test_any_separator_choice_is_accepted_or_refused_with_a_rule(seps: list[str]) -> None:
    data = {f"separator_{i + 1}": s for i, s in enumerate(seps)}
    try:
        cfg = load_config(data)
    except ConfigError as exc:
        assert str(exc)
        return
    used = [cfg.separator_1, cfg.separator_2, cfg.separator_3, cfg.separator_4, cfg.separator_5]
    assert not set(used) & DISALLOWED_SEPARATORS
    distinct = {cfg.separator_1, cfg.separator_2, cfg.separator_4, cfg.separator_5, cfg.separator_3}
    assert len(distinct) == 5 or (cfg.separator_1 == cfg.separator_3 and len(distinct) == 4)
    assert isinstance(cfg, BatchSegmentConfig)
