"""Camera routes of the gateway API: the installer's snapshot (the one way pixels leave the gateway).

`GET /api/cameras` lists the cameras and their facings (ids, states, scores — no pixels);
`GET /api/cameras/{id}/snapshot.jpg` returns the current frame with the ROI overlay as JPEG (`?overlay=false`:
the plain frame, over which the installer page draws its editable outlines).

Privacy (issue #8 part 4): there is no authentication yet, so the snapshot is served **only to loopback
clients** (127.0.0.0/8, ::1 — an installer on the gateway itself or through an SSH tunnel); any other client
gets 403. It is never cached (`Cache-Control: no-store`) and nothing is written to disk. A reverse proxy on
the gateway would make every client look local: do not put one in front of this route until the installer
login exists.

The installer's ROI editor (issue #8 part 7; the Cameras section of /installer), loopback-only for the same
reason (it changes what the cameras watch):

    GET  /api/cameras/{id}/rois            the ROIs as they run, each with its facing state and score
    POST /api/cameras/{id}/rois/preview    {rois}: validate, and the diff before → after (nothing written)
    PUT  /api/cameras/{id}/rois            {rois, installer}: validate, overlay, audit, apply live
    POST /api/cameras/{id}/reference       {roi_ids?, installer}: re-capture the reference (all or some)

A ROI list is validated exactly as `load_config` validates the config's (`edge.calibration.
validate_camera_rois`); a bad one is 422 with `detail: [{index, roi, field, message}]`. Applying writes the
full list to the installer overlay (`cameras: {id: {rois: [...]}}`, merged by `load_config` at the next start),
appends an audit line (`kind: camera_rois`, before → after), then swaps the running camera's ROIs and
re-captures the reference of new and re-drawn facings (`CameraCoordinator.set_rois`).
"""

from __future__ import annotations

import asyncio
import ipaddress
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, HTTPException, Request, Response
from pydantic import BaseModel, Field

from edge.calibration import (
    append_audit,
    roi_dict,
    run_file_op,
    update_camera_overlay,
    validate_camera_rois,
)
from edge.config import CameraRoi, StoreConfig

if TYPE_CHECKING:
    from edge.devices.cameras import CameraCoordinator
    from edge.gateway import Gateway


def _is_loopback(host: str | None) -> bool:
    if host is None:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _require_loopback(request: Request, what: str) -> None:
    client = request.client.host if request.client is not None else None
    if not _is_loopback(client):
        raise HTTPException(
            status_code=403, detail=f"{what} are served to loopback clients only (no auth yet)"
        )


class RoiList(BaseModel):
    """A camera's full ROI list as the page sends it (each item is checked like a config `rois[]` entry)."""

    rois: list[dict[str, Any]] = Field(max_length=200)
    installer: str = Field(default="installer", min_length=1, max_length=64)


class Recapture(BaseModel):
    """Which facings' reference to re-take (None: the whole view)."""

    roi_ids: list[str] | None = Field(default=None, max_length=200)
    installer: str = Field(default="installer", min_length=1, max_length=64)


def _diff(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per ROI id: added / removed / changed (with both sides) / unchanged, in the new list's order."""
    old = {r["id"]: r for r in before}
    new_ids = {r["id"] for r in after}
    out: list[dict[str, Any]] = []
    for r in after:
        prev = old.get(r["id"])
        change = "added" if prev is None else "unchanged" if prev == r else "changed"
        out.append({"id": r["id"], "change": change, "before": prev, "after": r})
    out.extend(
        {"id": r["id"], "change": "removed", "before": r, "after": None}
        for r in before
        if r["id"] not in new_ids
    )
    return out


def camera_router(gateway: Gateway) -> APIRouter:
    """The camera routes bound to one gateway (`app.include_router(camera_router(gateway))`)."""
    router = APIRouter()

    @router.get("/api/cameras")
    async def cameras() -> list[dict[str, Any]]:
        coordinator = gateway.cameras
        if coordinator is None:
            return []
        return [v.as_dict() for v in gateway.device_health() if v.family == coordinator.family]

    @router.get(
        "/api/cameras/{camera_id}/snapshot.jpg",
        response_class=Response,
        responses={200: {"content": {"image/jpeg": {}}}, 403: {}, 404: {}, 503: {}},
    )
    async def snapshot(camera_id: str, request: Request, overlay: bool = True) -> Response:
        _require_loopback(request, "camera snapshots")
        coordinator = gateway.cameras
        if coordinator is None or camera_id not in coordinator:
            raise HTTPException(status_code=404, detail=f"no camera {camera_id!r}")
        from edge.devices.cameras import CameraUnavailable  # noqa: PLC0415 - lazy: OpenCV only with cameras
        from edge.vision import NoFrameYet  # noqa: PLC0415 - as above

        try:
            jpeg = await coordinator.snapshot_jpeg(camera_id, overlay=overlay)
        except (CameraUnavailable, NoFrameYet) as exc:
            raise HTTPException(status_code=503, detail=str(exc)) from exc
        return Response(
            content=jpeg,
            media_type="image/jpeg",
            headers={"Cache-Control": "no-store", "Pragma": "no-cache", "X-Content-Type-Options": "nosniff"},
        )

    edit_lock = asyncio.Lock()
    """One ROI edit or re-capture at a time (the overlay is read-modify-write; a capture is one per camera)."""

    def coordinator_for(camera_id: str, request: Request, what: str) -> CameraCoordinator:
        _require_loopback(request, what)
        coordinator = gateway.cameras
        if coordinator is None or camera_id not in coordinator:
            raise HTTPException(status_code=404, detail=f"no camera {camera_id!r}")
        return coordinator

    def current_store() -> StoreConfig:
        """The store as it runs now: live bindings and every camera's live ROIs."""
        coordinator = gateway.cameras
        cameras = [coordinator.camera_config(c.id) if coordinator else c for c in gateway.store_cfg.cameras]
        bins = [gateway.bins.get(b.id, b) for b in gateway.store_cfg.bins]
        return gateway.store_cfg.model_copy(update={"cameras": cameras, "bins": bins})

    def checked(camera_id: str, body: RoiList) -> tuple[list[CameraRoi], list[dict[str, Any]]]:
        coordinator = gateway.cameras
        assert coordinator is not None  # noqa: S101 - coordinator_for() checked it
        rois, issues = validate_camera_rois(
            current_store(), camera_id, body.rois, frame_size=coordinator.frame_size(camera_id)
        )
        if issues:
            raise HTTPException(status_code=422, detail=[i.as_dict() for i in issues])
        before = [roi_dict(r) for r in coordinator.camera_config(camera_id).rois]
        return rois, _diff(before, [roi_dict(r) for r in rois])

    @router.get("/api/cameras/{camera_id}/rois")
    async def rois_view(camera_id: str, request: Request) -> dict[str, Any]:
        coordinator = coordinator_for(camera_id, request, "camera ROIs")
        cfg = coordinator.camera_config(camera_id)
        facings = {s.roi_id: s for s in coordinator.board.statuses() if s.camera_id == camera_id}
        size = coordinator.frame_size(camera_id)
        if size is None and cfg.frame_size is not None:
            size = (cfg.frame_size.width, cfg.frame_size.height)
        rois = []
        for r in cfg.rois:
            status = facings.get(r.id)
            rois.append(
                {
                    **roi_dict(r),
                    "points": [list(p) for p in r.points],
                    "state": status.state if status is not None else "unknown",
                    "score": None if status is None or status.score is None else round(status.score, 3),
                }
            )
        return {
            "camera_id": camera_id,
            "frame_size": None if size is None else {"width": size[0], "height": size[1]},
            "has_reference": coordinator.has_reference(camera_id),
            **await asyncio.to_thread(coordinator.reference_info, camera_id),
            "reference_capture": cfg.reference.capture,
            "rois": rois,
        }

    @router.post("/api/cameras/{camera_id}/rois/preview")
    async def rois_preview(camera_id: str, body: RoiList, request: Request) -> dict[str, Any]:
        coordinator_for(camera_id, request, "camera ROIs")
        _, diff = checked(camera_id, body)
        return {
            "camera_id": camera_id,
            "diff": diff,
            "changed": any(d["change"] != "unchanged" for d in diff),
        }

    @router.put("/api/cameras/{camera_id}/rois")
    async def rois_apply(camera_id: str, body: RoiList, request: Request) -> dict[str, Any]:
        coordinator = coordinator_for(camera_id, request, "camera ROIs")
        async with edit_lock:
            rois, diff = checked(camera_id, body)
            data_dir = Path(gateway.store_cfg.data_dir)
            entry = {
                "kind": "camera_rois",
                "camera_id": camera_id,
                "installer": body.installer,
                "before": [d["before"] for d in diff if d["before"] is not None],
                "after": [d["after"] for d in diff if d["after"] is not None],
                "changes": {d["id"]: d["change"] for d in diff if d["change"] != "unchanged"},
            }
            await run_file_op(update_camera_overlay, data_dir, camera_id, rois)
            line = await run_file_op(append_audit, data_dir, entry)
            recaptured: list[str] = []
            warning = None
            try:
                recaptured = await coordinator.set_rois(camera_id, rois)
            except (ValueError, RuntimeError, TimeoutError) as exc:
                # Written and running with the new ROIs; only the partial reference failed (camera moved,
                # a capture already running, no frames): the page offers the full re-capture.
                warning = f"reference not re-taken: {exc}; capture the reference again"
        return {
            "camera_id": camera_id,
            "diff": diff,
            "recaptured": recaptured,
            "warning": warning,
            "audit": line,
        }

    @router.post("/api/cameras/{camera_id}/reference")
    async def reference(camera_id: str, request: Request, body: Recapture | None = None) -> dict[str, Any]:
        coordinator = coordinator_for(camera_id, request, "reference captures")
        body = body or Recapture()
        known = {r.id for r in coordinator.camera_config(camera_id).rois}
        unknown = sorted(set(body.roi_ids or ()) - known)
        if unknown:
            raise HTTPException(status_code=422, detail=f"unknown ROI ids: {', '.join(unknown)}")
        from edge.devices.cameras import CameraUnavailable  # noqa: PLC0415 - lazy: OpenCV only with cameras

        async with edit_lock:
            try:
                await coordinator.capture_reference(camera_id, roi_ids=body.roi_ids)
            except CameraUnavailable as exc:
                raise HTTPException(status_code=503, detail=str(exc)) from exc
            except TimeoutError as exc:
                raise HTTPException(status_code=503, detail="the camera delivered no frames") from exc
            except (ValueError, RuntimeError) as exc:
                raise HTTPException(status_code=409, detail=str(exc)) from exc
            line = await run_file_op(
                append_audit,
                Path(gateway.store_cfg.data_dir),
                {
                    "kind": "camera_reference",
                    "camera_id": camera_id,
                    "installer": body.installer,
                    "roi_ids": body.roi_ids,
                },
            )
        return {
            "camera_id": camera_id,
            "has_reference": coordinator.has_reference(camera_id),
            **await asyncio.to_thread(coordinator.reference_info, camera_id),
            "audit": line,
        }

    return router
