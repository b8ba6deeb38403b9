"""The dashboard's charts: y-axis labels that tell their ticks apart and hold the data."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bss.web import charts

_Y_LABEL = re.compile(r'text-anchor="end">([^<]*)</text>')


def _y_labels(svg: str) -> list[str]:
    return _Y_LABEL.findall(svg)


def test_small_error_rates_get_distinct_labels() -> None:
    svg = charts.bars(
        "errors",
        ["2026-12-01", "2026-12-02"],
        [charts.Series("num_invalid_segment", [0.0013, 0.0004], "s1")],
        percent=True,
        stacked=False,
    )
    assert _y_labels(str(svg)) == ["0.0%", "0.1%", "0.2%"]


@given(st.floats(min_value=1e-6, max_value=1.0), st.booleans())
def test_y_labels_are_distinct_and_the_top_holds_the_largest_value(
    largest: float, percent: bool
) -> None:
    values = [largest, largest / 3]
    svg = str(charts.bars("t", ["a", "b"], [charts.Series("s", values, "s0")], percent=percent))
    labels = _y_labels(svg)
    assert len(labels) == 3 and len(set(labels)) == 3, labels
    if percent:
        top = float(labels[-1].removesuffix("%")) / 100
        assert top >= largest * (1 - 1e-9)
        assert float(labels[1].removesuffix("%")) / 100 == pytest.approx(top / 2)  # exact


def test_a_failed_jobs_advice_points_at_the_message_where_the_page_shows_it() -> None:
    from pathlib import Path

    from bss.web import views

    page = (Path(views.__file__).parent / "templates" / "job.html").read_text()
    assert page.index("job.error_message") < page.index("failure[1]")  # message, then advice
    advice = [todo for _what, todo in (*views.FAILURE_HELP.values(), views.FAILURE_DEFAULT)]
    assert not [a for a in advice if "message below" in a]
    assert sum("Read the message above" in a for a in advice) == 2
