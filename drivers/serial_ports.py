"""The serial ports of this machine, with USB identity and the stable `/dev/serial/by-id/…` path.

Why by-id: `/dev/ttyUSB0` is handed out in plug-in order, so two USB-RS485 adapters swap names after a reboot or
an unplug; udev's `/dev/serial/by-id/usb-<vendor>_<product>_<serial>-if<N>-port<M>` links are made from the
adapter's own USB descriptors and stay put (udev `60-serial.rules`). A store config should name ports by these
links, and the installer needs to see which link belongs to which adapter.

Source: pyserial's `serial.tools.list_ports.comports()` (on Linux it walks sysfs for ttyUSB/ttyACM/ttyAMA/… and
reads the USB vendor, product and serial number). Pseudo-terminals are never in that list; a pty (a simulator's
port) appears only when it is named explicitly.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from serial.tools import list_ports

BY_ID_DIR: Final = Path("/dev/serial/by-id")

USB_HINTS: Final = {
    0x0403: "FTDI USB-serial bridge",
    0x10C4: "Silicon Labs CP210x USB-serial bridge",
    0x1A86: "QinHeng CH340/CH341 USB-serial bridge",
    0x067B: "Prolific PL2303 USB-serial bridge",
    0x0C2E: "Honeywell (Metrologic) scanner",
    0x05E0: "Zebra (Symbol) scanner",
}
"""Vendor ids worth a word in the listing (names per the linux-usb.org usb.ids registry). A bridge chip says
only "some RS-485/RS-232 device is behind this"; the probes find out what."""

SCANNER_VENDORS: Final = frozenset({0x0C2E, 0x05E0})
"""Vendors whose USB-serial (CDC) device is most likely a barcode scanner: a scanner only talks when it
scans, so it cannot be probed, only recognised."""


@dataclass(frozen=True, slots=True)
class SerialPortInfo:
    """One serial port as the installer sees it."""

    device: str
    """The kernel's name, e.g. `/dev/ttyUSB0` (or the path as given, for an explicit port)."""
    by_id: str | None
    """The stable udev link to it, when there is one."""
    vid: int | None = None
    pid: int | None = None
    serial_number: str | None = None
    manufacturer: str | None = None
    product: str | None = None
    description: str | None = None
    explicit: bool = False
    """Named on the command line rather than found (ptys, or a port pyserial does not list)."""

    @property
    def usb(self) -> bool:
        """True for a USB device (it has a vendor id)."""
        return self.vid is not None

    @property
    def stable_path(self) -> str:
        """What a config should name: the by-id link when there is one, else the device path."""
        return self.by_id or self.device

    @property
    def hint(self) -> str | None:
        """A word on what the vendor id suggests, or None."""
        return USB_HINTS.get(self.vid) if self.vid is not None else None

    @property
    def likely_scanner(self) -> bool:
        """The vendor makes barcode scanners (see `SCANNER_VENDORS`)."""
        return self.vid in SCANNER_VENDORS

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready; ids as 4-digit lower-case hex, as `lsusb` prints them."""
        return {
            "device": self.device,
            "by_id": self.by_id,
            "usb": self.usb,
            "vid": None if self.vid is None else f"{self.vid:04x}",
            "pid": None if self.pid is None else f"{self.pid:04x}",
            "serial_number": self.serial_number,
            "manufacturer": self.manufacturer,
            "product": self.product,
            "description": self.description,
            "hint": self.hint,
            "explicit": self.explicit,
        }


def by_id_links(by_id_dir: Path = BY_ID_DIR) -> dict[str, str]:
    """Resolved device path → its by-id link (the first by name when several point at one device)."""
    links: dict[str, str] = {}
    try:
        entries = sorted(by_id_dir.iterdir())
    except OSError:  # no USB serial device plugged in: udev has not made the folder
        return links
    for entry in entries:
        if entry.is_symlink():
            links.setdefault(os.path.realpath(entry), str(entry))
    return links


def _text(value: object) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text if text and text != "n/a" else None


def list_serial_ports(
    explicit: Iterable[str] = (),
    *,
    by_id_dir: Path = BY_ID_DIR,
    comports: Callable[[], Sequence[Any]] = list_ports.comports,
) -> list[SerialPortInfo]:
    """The machine's serial ports (pyserial's list), then every `explicit` path not already among them.

    An explicit path may itself be a by-id link or any other symlink; it is matched to a listed port by its
    resolved path, so `--probe /dev/serial/by-id/…` does not list the adapter twice.
    """
    links = by_id_links(by_id_dir)
    out: list[SerialPortInfo] = []
    seen: dict[str, int] = {}
    for port in sorted(comports(), key=lambda p: str(p.device)):
        device = str(port.device)
        real = os.path.realpath(device)
        vid = port.vid if isinstance(port.vid, int) else None
        info = SerialPortInfo(
            device=device,
            by_id=links.get(real),
            vid=vid,
            pid=port.pid if isinstance(port.pid, int) else None,
            serial_number=_text(port.serial_number),
            manufacturer=_text(port.manufacturer),
            product=_text(port.product),
            description=_text(port.description),
        )
        seen[real] = len(out)
        out.append(info)
    for path in explicit:
        real = os.path.realpath(path)
        if real in seen:
            continue
        by_id = path if path.startswith(str(by_id_dir) + os.sep) else links.get(real)
        seen[real] = len(out)
        out.append(SerialPortInfo(device=path, by_id=by_id, explicit=True))
    return out


def stable_path(path: str, *, by_id_dir: Path = BY_ID_DIR) -> str:
    """The by-id link for a device path when there is one, else the path unchanged."""
    if path.startswith(str(by_id_dir) + os.sep):
        return path
    return by_id_links(by_id_dir).get(os.path.realpath(path), path)
