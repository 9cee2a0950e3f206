"""The one exception tree of the RFID codecs (STYLE.md rule 10).

A module of its own so that `protocol.py` (serial frames) and `epc.py` (EPC binary encodings) can both raise
it without importing each other. Every subclass is a `ProtocolError`, and every `ProtocolError` is a
`ValueError`: callers that only care "this input is bad" catch one class; the reader client catches the
subclasses to keep separate health counters.
"""

from __future__ import annotations


class ProtocolError(ValueError):
    """Bytes that cannot be what the serial UHF protocol or the EPC Tag Data Standard says they are."""


class FrameError(ProtocolError):
    """A serial frame that starts with the 0xBB header but is not a valid frame (length, end byte, type)."""


class ChecksumError(FrameError):
    """A serial frame whose checksum byte does not match its contents (a garbled line)."""


class TagCrcError(ProtocolError):
    """A tag notice whose Gen2 CRC-16 does not match PC+EPC: the tag's backscatter was received garbled."""


class EpcError(ProtocolError):
    """An EPC that claims a GS1 scheme (e.g. header 0x30, SGTIN-96) but violates it (length, partition)."""
