"""The serial-port listing: pyserial's own list on this machine, USB identity, by-id links, explicit ptys.

The USB adapter is described the way pyserial describes one (a `ListPortInfo` with the sysfs fields filled in
as `list_ports_linux` fills them), pointing at a real pty so that the by-id symlink resolves on this machine;
the by-id folder is a temporary folder of real symlinks.
"""

from __future__ import annotations

from pathlib import Path

from serial.tools.list_ports_common import ListPortInfo

from drivers.serial_ports import by_id_links, list_serial_ports, stable_path
from firmware_sims.serial_link import PtyNullModem


def _ftdi(device: str) -> ListPortInfo:
    info = ListPortInfo(device, skip_link_detection=True)
    info.vid, info.pid = 0x0403, 0x6001
    info.serial_number = "A10K3ZXY"
    info.manufacturer = "FTDI"
    info.product = "FT232R USB UART"
    info.description = "FT232R USB UART"
    info.hwid = "USB VID:PID=0403:6001 SER=A10K3ZXY"
    return info


async def test_a_usb_adapter_is_listed_with_its_identity_and_by_id_link(tmp_path: Path) -> None:
    async with PtyNullModem() as link:
        by_id = tmp_path / "by-id"
        by_id.mkdir()
        stable = by_id / "usb-FTDI_FT232R_USB_UART_A10K3ZXY-if00-port0"
        stable.symlink_to(link.host_path)
        ports = list_serial_ports(by_id_dir=by_id, comports=lambda: [_ftdi(link.host_path)])
        assert len(ports) == 1
        port = ports[0]
        assert port.by_id == str(stable)
        assert port.stable_path == str(stable)
        assert (port.usb, port.explicit, port.likely_scanner) == (True, False, False)
        assert port.hint == "FTDI USB-serial bridge"
        assert port.as_dict() == {
            "device": link.host_path,
            "by_id": str(stable),
            "usb": True,
            "vid": "0403",
            "pid": "6001",
            "serial_number": "A10K3ZXY",
            "manufacturer": "FTDI",
            "product": "FT232R USB UART",
            "description": "FT232R USB UART",
            "hint": "FTDI USB-serial bridge",
            "explicit": False,
        }
        # Naming the adapter by its link, or by its kernel name, does not list it twice.
        again = list_serial_ports(
            [str(stable), link.host_path], by_id_dir=by_id, comports=lambda: [_ftdi(link.host_path)]
        )
        assert [p.device for p in again] == [link.host_path]
        assert stable_path(link.host_path, by_id_dir=by_id) == str(stable)
        assert stable_path(str(stable), by_id_dir=by_id) == str(stable)


async def test_ptys_are_listed_only_when_named(tmp_path: Path) -> None:
    """Runs pyserial's real `comports()` against this machine's sysfs."""
    async with PtyNullModem() as link:
        listed = list_serial_ports(by_id_dir=tmp_path)
        assert link.host_path not in [p.device for p in listed]
        named = list_serial_ports([link.host_path], by_id_dir=tmp_path)
        assert [p.device for p in named][-1] == link.host_path
        pty = named[-1]
        assert (pty.explicit, pty.usb, pty.by_id) == (True, False, None)
        assert pty.stable_path == link.host_path
        assert len(named) == len(listed) + 1


def test_no_by_id_folder_means_no_links(tmp_path: Path) -> None:
    assert by_id_links(tmp_path / "missing") == {}
    assert stable_path("/dev/ttyUSB0", by_id_dir=tmp_path / "missing") == "/dev/ttyUSB0"


def test_a_scanner_vendor_is_recognised(tmp_path: Path) -> None:
    info = ListPortInfo("/dev/ttyACM0", skip_link_detection=True)
    info.vid, info.pid = 0x0C2E, 0x0B61
    ports = list_serial_ports(by_id_dir=tmp_path, comports=lambda: [info])
    assert ports[0].likely_scanner
    assert ports[0].hint == "Honeywell (Metrologic) scanner"
