"""The running product catalogue on the gateway API (issue #4 part 7: what a catalogue push changed).

    GET /api/catalogue            version, source file and every item (prices as CNY strings)
    GET /api/catalogue/{code}     one item by GTIN (8/12/13/14 digits) or store SKU

Read-only: the catalogue changes by editing its file on site or by a push from HQ (`cmd/config`, which restarts
the runtime on the new file), never through this API. 404 when the store config names no catalogue.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, HTTPException

if TYPE_CHECKING:
    from edge.gateway import Gateway
    from edge.retail.catalogue import Catalogue, CatalogueItem


def _item_view(item: CatalogueItem) -> dict[str, Any]:
    return item.model_dump(mode="json", exclude_none=True)


def catalogue_router(gateway: Gateway) -> APIRouter:
    """The catalogue routes bound to one gateway."""
    router = APIRouter(prefix="/api/catalogue", tags=["catalogue"])

    def catalogue() -> Catalogue:
        found = gateway.config.catalogue
        if found is None:
            raise HTTPException(status_code=404, detail="this store config names no catalogue")
        return found

    @router.get("")
    async def whole() -> dict[str, Any]:
        cat = catalogue()
        source = gateway.store_cfg.catalogue
        return {
            "version": cat.version,
            "file": None if source is None else source.name,
            "currency": cat.currency,
            "items": [_item_view(item) for item in cat.items],
        }

    @router.get("/{code}")
    async def one(code: str) -> dict[str, Any]:
        item = catalogue().get(code)
        if item is None:
            raise HTTPException(status_code=404, detail=f"{code}: not in the catalogue")
        return _item_view(item)

    return router


__all__ = ["catalogue_router"]
