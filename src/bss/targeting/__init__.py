"""Segments for OpenRTB bid requests, in process or behind POST /openrtb/user-data.

For a Python bidder on the machine of the embedded store, without an HTTP hop::

    import bss.targeting

    targeting = bss.targeting.open(data_dir="/var/lib/bss")  # or store_url=, database_url=
    answer = targeting.user_data(bid_request, member_id=123)
    bid_request["user"]["data"] = ...  # or: targeting.merged(bid_request, 123)

`user_data` answers what the endpoint answers inside "response" (less "status"): `data`
(the OpenRTB Data objects), `ids` (the IDs found, in the link text form), `related_ids`,
`reason` (why there are none) and `skipped` (parts of the request not used). The module
level `bss.targeting.user_data(request, member_id)` opens the targeting of the BSS_*
settings on first use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bss.targeting.service import Answer, DataSettings, Targeting, merge_user_data

__all__ = ["Answer", "Targeting", "open", "user_data"]


class OpenTargeting:
    """A `Targeting` with the store and database it opened (close() closes them)."""

    def __init__(self, targeting: Targeting, close: Any) -> None:
        self.targeting = targeting
        self._close = close

    def user_data(self, request: dict[str, Any], member_id: int) -> dict[str, Any]:
        return self.targeting.answer(request, member_id).out()

    def merged(self, request: dict[str, Any], member_id: int) -> dict[str, Any]:
        """`request` with its user's Data objects in user.data (see POST ...?merge=true)."""
        answer = self.targeting.answer(request, member_id)
        return merge_user_data(request, answer.data, self.targeting.settings.data_id)

    def close(self) -> None:
        self._close()


def open(
    *,
    data_dir: str | Path | None = None,
    store_url: str | None = None,
    database_url: str | None = None,
    settings: Any = None,
) -> OpenTargeting:
    """Targeting over the service's store and database: those of `data_dir` (the embedded
    LMDB store and SQLite database), or given as URLs; the rest from `settings` (a
    bss.settings.Settings), by default the BSS_* environment."""
    from bss.db import make_engine
    from bss.lifecycle.optout import SuppressionList
    from bss.settings import Settings
    from bss.store import open_store
    from bss.targeting.catalog import Catalog

    overrides: dict[str, Any] = {}
    if data_dir is not None:
        overrides["data_dir"] = Path(data_dir)
    if store_url is not None:
        overrides["store_url"] = store_url
    if database_url is not None:
        overrides["database_url"] = database_url
    base = settings if settings is not None else Settings()
    settings = Settings(**{**base.model_dump(), **overrides})
    db = make_engine(settings.resolved_database_url)
    store = open_store(settings.resolved_store_url)
    targeting = Targeting(
        store, Catalog(db), data_settings(settings), SuppressionList.of(db, settings)
    )

    def close() -> None:
        store.close()
        db.dispose()

    return OpenTargeting(targeting, close)


def data_settings(settings: Any) -> DataSettings:
    return DataSettings(
        data_id=settings.openrtb_data_id,
        data_name=settings.openrtb_data_name,
        tcf_vendor_id=settings.tcf_vendor_id,
        caps=settings.graph_caps,
    )


_default: OpenTargeting | None = None


def user_data(request: dict[str, Any], member_id: int) -> dict[str, Any]:
    """`open().user_data(request, member_id)` over the BSS_* settings, opened once."""
    global _default
    if _default is None:
        _default = open()
    return _default.user_data(request, member_id)
