"""Run a generator on a thread of its own, one item ahead of its consumer."""

from __future__ import annotations

import queue
import threading
from collections.abc import Generator, Iterator
from typing import TypeVar

T = TypeVar("T")

_ITEM, _END, _ERROR = range(3)


def read_ahead(items: Iterator[T], depth: int = 1) -> Generator[T, None, None]:
    """The items of `items`, produced on another thread at most `depth` items ahead.

    An exception raised by `items` is raised here after the items before it. When the
    consumer stops early (closes this generator), the producer stops at its next item.
    """
    slots: queue.Queue[tuple[int, object]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def offer(entry: tuple[int, object]) -> bool:
        while not stop.is_set():
            try:
                slots.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not offer((_ITEM, item)):
                    return
            offer((_END, None))
        except BaseException as exc:  # handed to the consumer, raised on its thread
            offer((_ERROR, exc))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    producer = threading.Thread(target=produce, name="bss-read-ahead", daemon=True)
    producer.start()
    try:
        while True:
            kind, value = slots.get()
            if kind == _END:
                return
            if kind == _ERROR:
                raise value  # type: ignore[misc]
            yield value  # type: ignore[misc]
    finally:
        stop.set()
        producer.join()
