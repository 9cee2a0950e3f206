"""The BLE key secrets file: permissions, formats, validation, and keys that never show themselves."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from drivers.ble.keys import BindKey, KeyFileError, load_keys, parse_keys

KEY_HEX = "814aac74c4f17b6c1581e1ab87816b99"
OTHER_HEX = "231d39c1d7cc1ab1aee224cd096db932"


def _write(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text, encoding="utf-8")
    os.chmod(path, mode)
    return path


def test_yaml_file_with_mode_0600_loads_normalised(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "keys.yaml", f'"a4c1388d18b2": "{KEY_HEX}"\n"54-48-E6-8F-80-A5": "{OTHER_HEX.upper()}"\n'
    )
    keys = load_keys(path)
    assert set(keys) == {"A4:C1:38:8D:18:B2", "54:48:E6:8F:80:A5"}
    assert keys["A4:C1:38:8D:18:B2"].raw == bytes.fromhex(KEY_HEX)
    assert keys["54:48:E6:8F:80:A5"] == BindKey.from_hex(OTHER_HEX)


def test_json_file_and_read_only_mode(tmp_path: Path) -> None:
    path = _write(tmp_path / "keys.json", f'{{"A4:C1:38:8D:18:B2": "{KEY_HEX}"}}', mode=0o400)
    assert load_keys(path)["A4:C1:38:8D:18:B2"].raw.hex() == KEY_HEX


def test_empty_file_is_no_keys(tmp_path: Path) -> None:
    assert load_keys(_write(tmp_path / "keys.yaml", "")) == {}


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o666])
def test_group_or_world_access_is_refused_naming_file_and_mode(tmp_path: Path, mode: int) -> None:
    path = _write(tmp_path / "keys.yaml", f'"A4:C1:38:8D:18:B2": "{KEY_HEX}"\n', mode=mode)
    with pytest.raises(KeyFileError) as info:
        load_keys(path)
    message = str(info.value)
    assert str(path) in message
    assert f"{mode:04o}" in message
    assert "0600" in message
    assert KEY_HEX not in message


def test_missing_file_and_directory_are_refused(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="cannot stat"):
        load_keys(tmp_path / "nope.yaml")
    (tmp_path / "dir.yaml").mkdir(mode=0o700)
    with pytest.raises(KeyFileError, match="not a regular file"):
        load_keys(tmp_path / "dir.yaml")


@pytest.mark.parametrize(
    ("text", "match"),
    [
        (f'"A4:C1:38:8D:18:B2": "{KEY_HEX}"\n"a4c1388d18b2": "{OTHER_HEX}"\n', "more than once"),
        (f'"A4:C1:38:8D:18:B2": "{KEY_HEX}"\n"A4:C1:38:8D:18:B2": "{OTHER_HEX}"\n', "duplicate MAC"),
        ('"A4:C1:38:8D:18:B2": 12345678901234567890123456789012\n', "quoted string"),
        (f'"A4:C1:38:8D:18:B2": "{KEY_HEX[:-2]}"\n', "32 hex digits"),
        (f'"A4:C1:38:8D:18:B2": "{KEY_HEX[:-2]}zz"\n', "hex digits only"),
        (f'"not-a-mac": "{KEY_HEX}"\n', "not a MAC"),
        (f'- "{KEY_HEX}"\n', "mapping"),
        (f'"A4:C1:38:8D:18:B2": "{KEY_HEX}\n', "invalid YAML at line"),
    ],
)
def test_bad_content_is_refused_without_echoing_keys(tmp_path: Path, text: str, match: str) -> None:
    path = _write(tmp_path / "keys.yaml", text)
    with pytest.raises(KeyFileError, match=match) as info:
        load_keys(path)
    message = str(info.value)
    assert str(path) in message
    for secret in (KEY_HEX, KEY_HEX[:-2], OTHER_HEX, "1234567890123456"):
        assert secret not in message


def test_invalid_json_reports_position_only(tmp_path: Path) -> None:
    path = _write(tmp_path / "keys.json", f'{{"A4:C1:38:8D:18:B2": "{KEY_HEX}",}}')
    with pytest.raises(KeyFileError, match="invalid JSON at line 1") as info:
        load_keys(path)
    assert KEY_HEX not in str(info.value)


def test_bind_key_never_shows_itself(caplog: pytest.LogCaptureFixture) -> None:
    key = BindKey.from_hex(KEY_HEX)
    keys = parse_keys({"A4:C1:38:8D:18:B2": KEY_HEX})
    caplog.set_level(logging.DEBUG)
    logging.getLogger("test").warning("loaded %r / %s / %s", key, key, keys)
    text = repr(key) + str(key) + repr(keys) + caplog.text
    assert "redacted" in text
    assert KEY_HEX not in text
    assert KEY_HEX.upper() not in text
    assert repr(bytes.fromhex(KEY_HEX)) not in text
    with pytest.raises(ValueError, match="16 bytes"):
        BindKey(b"short")
