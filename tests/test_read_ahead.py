"""read_ahead: a generator run one item ahead on a thread of its own (Avro decoding, the
embedded store's merge of a job's sorted runs)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bss.read_ahead import read_ahead


def test_items_come_in_order_and_an_error_after_the_items_before_it() -> None:
    assert list(read_ahead(iter(range(50)))) == list(range(50))

    def failing() -> Iterator[int]:
        yield 1
        raise ValueError("boom")

    items = read_ahead(failing())
    assert next(items) == 1
    with pytest.raises(ValueError, match="boom"):
        next(items)


def test_closing_early_stops_the_producer() -> None:
    produced: list[int] = []

    def endless() -> Iterator[int]:
        n = 0
        while True:
            produced.append(n)
            yield n
            n += 1

    items = read_ahead(endless())
    assert next(items) == 0
    items.close()
    count = len(produced)
    assert count <= 3  # one handed over, one waiting in the slot, one being made
    assert len(produced) == count
