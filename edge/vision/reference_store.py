"""Camera references on the gateway's disk, so a restart compares against the stocked shelf, not the current one.

Without this, a gateway restarted while a facing is empty would capture "empty" as its reference (with
`reference.capture: on_start`) and call that facing `ok` until the next manual re-capture. Files, per camera,
in `DATA_DIR/camera-references/`:

* `{camera_id}.npy` — the reference as the analyser keeps it (`ReferenceImage.colour`: BGR float32 at
  analysis scale, 640 × 360 for 720p, ≈ 2.7 MB), written with `numpy.save` (`allow_pickle=False` on load);
* `{camera_id}.json` — metadata: format, camera id, full frame size, analysis shape, capture time (RFC 3339
  UTC) and the SHA-256 of the `.npy`.

Each file is written to a temporary name, fsynced and renamed (atomic on POSIX); the metadata goes last and
names the array's digest, so a crash between the two leaves a pair that does not match and is ignored. A file
that is missing, unreadable, of another format or camera, or whose digest or shape does not match is logged
and ignored: the camera then captures a reference as its config says.

Privacy (issue #8): these files hold pixels of the shelf. They stay on the gateway — mode 0600 in a 0700
folder, never served by any API, never sent to the hub, and not in `shelfgate backup` (which copies the
database only). Delete the folder to forget them; a re-capture overwrites them.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import re
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import numpy as np

from edge.vision.analyser import ReferenceImage

_log = logging.getLogger(__name__)

FORMAT: Final = 1
"""Version of the metadata file; bumped on incompatible changes (an older gateway then ignores the file)."""
FOLDER: Final = "camera-references"
"""The folder under the gateway's data_dir."""
_SAFE_ID: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class ReferenceStore:
    """Save and load camera references in one folder (created on the first save, mode 0700)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def paths(self, camera_id: str) -> tuple[Path, Path]:
        """(array file, metadata file) of one camera. ValueError for an id unfit for a file name."""
        if not _SAFE_ID.fullmatch(camera_id):
            raise ValueError(f"camera id {camera_id!r} cannot name a reference file")
        return self.directory / f"{camera_id}.npy", self.directory / f"{camera_id}.json"

    def save(self, camera_id: str, image: ReferenceImage, *, captured_at: float | None = None) -> None:
        """Write (or overwrite) a camera's reference. Raises OSError when the disk refuses."""
        array_path, meta_path = self.paths(camera_id)
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(image.colour, dtype=np.float32), allow_pickle=False)
        data = buf.getvalue()
        meta = {
            "format": FORMAT,
            "camera_id": camera_id,
            "width": image.width,
            "height": image.height,
            "shape": list(image.colour.shape),
            "captured_at": datetime.fromtimestamp(time.time() if captured_at is None else captured_at, UTC)
            .isoformat(timespec="seconds")
            .replace("+00:00", "Z"),
            "sha256": hashlib.sha256(data).hexdigest(),
        }
        _write_atomic(array_path, data)
        _write_atomic(meta_path, json.dumps(meta, indent=2).encode("utf-8") + b"\n")

    def load(self, camera_id: str) -> ReferenceImage | None:
        """A camera's saved reference, or None (nothing saved, or a file that does not check out — logged)."""
        array_path, meta_path = self.paths(camera_id)
        if not meta_path.exists() and not array_path.exists():
            return None
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            data = array_path.read_bytes()
        except (OSError, ValueError) as exc:
            _log.warning("camera %s: stored reference unreadable (%s); ignoring it", camera_id, exc)
            return None
        problem = _check_meta(meta, camera_id, data)
        if problem is None:
            try:
                colour = np.load(io.BytesIO(data), allow_pickle=False)
            except ValueError as exc:
                problem = f"array unreadable: {exc}"
            else:
                if list(colour.shape) != meta["shape"] or colour.dtype != np.float32:
                    problem = f"array is {colour.shape} {colour.dtype}, metadata says {meta['shape']} float32"
        if problem is not None:
            _log.warning("camera %s: stored reference ignored: %s (%s)", camera_id, problem, meta_path)
            return None
        return ReferenceImage(colour, int(meta["width"]), int(meta["height"]))

    def captured_at(self, camera_id: str) -> str | None:
        """When the saved reference was taken (RFC 3339), None without one."""
        try:
            meta = json.loads(self.paths(camera_id)[1].read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        value = meta.get("captured_at") if isinstance(meta, dict) else None
        return value if isinstance(value, str) else None


def _check_meta(meta: object, camera_id: str, data: bytes) -> str | None:
    if not isinstance(meta, dict):
        return "metadata is not an object"
    if meta.get("format") != FORMAT:
        return f"format {meta.get('format')!r}, this gateway reads {FORMAT}"
    if meta.get("camera_id") != camera_id:
        return f"written for camera {meta.get('camera_id')!r}"
    width, height, shape = meta.get("width"), meta.get("height"), meta.get("shape")
    if not (isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0):
        return "frame size missing"
    if not (isinstance(shape, list) and len(shape) == 3 and all(isinstance(v, int) for v in shape)):
        return "shape missing"
    if meta.get("sha256") != hashlib.sha256(data).hexdigest():
        return "array does not match its metadata (digest)"
    return None


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
