"""Per-sensor BTHome bind keys from a secrets file (never from the config file: STYLE.md rule 11).

The file maps MAC → 32 hex digits, as YAML or JSON (`.json` is read as JSON, anything else as YAML)::

    # /etc/shelfgate/ble-keys.yaml   (chmod 600)
    "A4:C1:38:8D:18:B2": "814aac74c4f17b6c1581e1ab87816b99"

Rules, all checked before a single key is used:
- the file must not be readable or writable by group or others (mode 0600 or 0400), like `~/.ssh/id_*`:
  an AES-CCM bind key is the only thing that keeps a neighbour from forging shelf weights;
- keys are quoted strings of exactly 32 hex digits (YAML would read an all-digit key as an integer);
- a MAC may appear once (after normalising `a4c1…`/`A4-C1-…` spellings); duplicates are errors.

Key material never reaches a log line, an exception message or a `repr`: `BindKey` prints as redacted, and
every error names the file, the MAC and what is wrong — never the value.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any, Final

import yaml

from drivers.ble.protocol import KEY_LENGTH, ProtocolError, normalize_mac, parse_key_hex

_GROUP_OTHER_BITS: Final = 0o077


class KeyFileError(Exception):
    """The secrets file is unusable; `path` and `reason` say why (never with key material)."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        super().__init__(f"BLE key file {os.fspath(path)}: {reason}")
        self.path = os.fspath(path)
        self.reason = reason


class BindKey:
    """A 16-byte AES-128 bind key that refuses to show itself in logs, reprs and tracebacks."""

    __slots__ = ("_raw",)

    def __init__(self, raw: bytes) -> None:
        if len(raw) != KEY_LENGTH:
            raise ValueError(f"a BTHome bind key is {KEY_LENGTH} bytes, got {len(raw)}")
        self._raw = bytes(raw)

    @classmethod
    def from_hex(cls, key_hex: str) -> BindKey:
        """32 hex digits → key; `drivers.ble.protocol.ProtocolError` (without the value) when malformed."""
        return cls(parse_key_hex(key_hex))

    @property
    def raw(self) -> bytes:
        """The key bytes, for the AES-CCM cipher only."""
        return self._raw

    def __repr__(self) -> str:
        return "BindKey(<redacted>)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BindKey) and other._raw == self._raw

    def __hash__(self) -> int:
        return hash(self._raw)


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate mapping keys instead of silently keeping the last one."""


def _construct_unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: set[object] = set()
    for key_node, _value_node in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_unique_mapping,
)


def check_permissions(path: str | os.PathLike[str]) -> None:
    """Refuse a secrets file that group or others may read or write (or that is not a regular file)."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise KeyFileError(path, f"cannot stat: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise KeyFileError(path, "is not a regular file")
    mode = stat.S_IMODE(st.st_mode)
    if mode & _GROUP_OTHER_BITS:
        raise KeyFileError(
            path,
            f"has mode {mode:04o}; it holds encryption keys and must be 0600 "
            f"(run: chmod 600 {os.fspath(path)})",
        )


def _parse_document(path: Path, text: str) -> object:
    """Parse without ever echoing file content: YAML/JSON error messages can quote the offending line."""
    if path.suffix.lower() == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise KeyFileError(path, f"invalid JSON at line {exc.lineno} column {exc.colno}") from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        what = "duplicate MAC" if "duplicate key" in (exc.problem or "") else "invalid YAML"
        raise KeyFileError(path, f"{what}{where}") from None
    except yaml.YAMLError:
        raise KeyFileError(path, "invalid YAML") from None


def parse_keys(document: object, path: str | os.PathLike[str] = "<keys>") -> dict[str, BindKey]:
    """Validate a parsed document into {normalised MAC: BindKey}."""
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise KeyFileError(path, "must be a mapping of MAC address to a 32-hex-digit key")
    keys: dict[str, BindKey] = {}
    for raw_mac, raw_key in document.items():
        try:
            mac = normalize_mac(str(raw_mac))
        except ProtocolError:
            raise KeyFileError(path, f"{str(raw_mac)[:40]!r} is not a MAC address") from None
        if mac in keys:
            raise KeyFileError(path, f"MAC {mac} appears more than once")
        if not isinstance(raw_key, str):
            raise KeyFileError(path, f"key for {mac} must be a quoted string of {2 * KEY_LENGTH} hex digits")
        try:
            keys[mac] = BindKey.from_hex(raw_key)
        except ProtocolError as exc:
            raise KeyFileError(path, f"key for {mac}: {exc}") from None
    return keys


def load_keys(path: str | os.PathLike[str]) -> dict[str, BindKey]:
    """Read and validate the secrets file: {normalised MAC: BindKey}. Raises `KeyFileError`."""
    file_path = Path(path)
    check_permissions(file_path)
    try:
        text = file_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(
            file_path, f"cannot read: {getattr(exc, 'strerror', None) or type(exc).__name__}"
        ) from None
    return parse_keys(_parse_document(file_path, text), file_path)
