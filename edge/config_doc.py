"""Render the store-config reference (docs/config.md) from the pydantic models, so the doc matches the code.

`python -m edge.config_doc > docs/config.md`; a test fails when the committed file differs from this output.
"""

from __future__ import annotations

from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from edge.config import (
    Alerts,
    Api,
    Barcodes,
    Bin,
    Ble,
    BleSensor,
    Bridge,
    Broker,
    Calibration,
    Camera,
    CameraReference,
    CameraRoi,
    Forecast,
    FrameSize,
    LocalizedName,
    LossRules,
    RfidAntenna,
    RfidPresence,
    RfidReader,
    RtuBus,
    Scale,
    Scanner,
    ShrinkRules,
    StoreConfig,
    TcpBus,
    Transmitter,
)
from edge.retail.hours import OpeningHours

SECTIONS: list[tuple[str, type[BaseModel]]] = [
    ("top level", StoreConfig),
    ("`buses[]` with `kind: rtu`", RtuBus),
    ("`buses[]` with `kind: tcp`", TcpBus),
    ("`transmitters[]`", Transmitter),
    ("`scales[]`", Scale),
    ("`scanners[]`", Scanner),
    ("`rfid_readers[]`", RfidReader),
    ("`rfid_readers[].antennas[]`", RfidAntenna),
    ("`ble_sensors[]`", BleSensor),
    ("`cameras[]`", Camera),
    ("`cameras[].rois[]`", CameraRoi),
    ("`cameras[].frame_size`", FrameSize),
    ("`cameras[].reference`", CameraReference),
    ("`bins[]`", Bin),
    ("`bins[].name`", LocalizedName),
    ("`bins[].calibration`", Calibration),
    ("`broker`", Broker),
    ("`api`", Api),
    ("`alerts`", Alerts),
    ("`bridge`", Bridge),
    ("`barcodes`", Barcodes),
    ("`rfid_presence`", RfidPresence),
    ("`ble`", Ble),
    ("`opening_hours`", OpeningHours),
    ("`forecast`", Forecast),
    ("`loss`", LossRules),
    ("`shrink`", ShrinkRules),
]


def _type_text(ann: Any) -> str:
    origin, args = get_origin(ann), get_args(ann)
    if origin is Annotated:
        return _type_text(args[0])
    if origin in (Union, UnionType):
        names = [_type_text(a) for a in args if a is not type(None)]
        text = " or ".join(names)
        return f"{text} or null" if type(None) in args else text
    if origin is list:
        return f"list of {_type_text(args[0])}"
    if origin is Literal:
        return " \\| ".join(repr(a) for a in args)
    return getattr(ann, "__name__", None) or str(ann)


def _type_name(info: FieldInfo) -> str:
    return _type_text(info.annotation)


def _default(info: FieldInfo) -> str:
    if info.is_required():
        return "**required**"
    if info.default is PydanticUndefined:
        return "(computed)"
    if isinstance(info.default, BaseModel):
        return "(section defaults)"
    return f"`{info.default!r}`" if info.default is not None else "none"


def _constraints(info: FieldInfo) -> str:
    parts = []
    for m in info.metadata:
        for attr, sym in (("gt", ">"), ("ge", "≥"), ("lt", "<"), ("le", "≤"), ("min_length", "min length")):
            v = getattr(m, attr, None)
            if v is not None:
                parts.append(f"{sym} {v}")
    return ", ".join(parts)


def render() -> str:
    """The whole reference as Markdown."""
    out = [
        "# Store config reference",
        "",
        "Generated from `edge/config.py` by `python -m edge.config_doc` — do not edit by hand.",
        "",
        "A store config is one YAML file: `shelfgate check-config FILE` validates it and prints every error",
        "as `file:line: key.path: message` (exit 2), or `OK …` (exit 0). Unknown keys are errors. Duplicates",
        "(bin ids, device ids, unit ids on one bus, channels of one device) and contradictions (`safety_stock` ≥",
        "`max_stock`, a channel beyond the register profile, an unknown bus/device/profile) are errors.",
        "Register profiles are looked up as `profiles/NAME.yaml` next to the store config, then in the project's",
        "`config/profiles/`. Relative `data_dir` is relative to the config file. Secrets (broker password) live",
        "in files referenced by path, never in the config. See `config/demo-store.yaml` for a full example.",
        "",
        "Device ids are unique across all families (transmitters, scales, scanners, RFID readers, BLE sensors),",
        "and each serial port belongs to one device or RTU bus. A bin sits on a Modbus transmitter channel or on",
        "a BLE shelf sensor (`device: <sensor id>`, `channel: <mass object index>`; BTHome reports grams, so",
        "`zero: 0` = empty plate and `span_g_per_unit: 1`). BLE bind keys live in `ble.keys_file` (mode 0600,",
        "relative to the config file), never in the config.",
        "",
    ]
    for title, model in SECTIONS:
        out += [
            f"## {title}",
            "",
            "| key | type | default | constraints | meaning |",
            "|---|---|---|---|---|",
        ]
        for name, info in model.model_fields.items():
            doc = (info.description or "").replace("|", "\\|")
            if not doc and model.__doc__:
                doc = ""
            out.append(f"| `{name}` | {_type_name(info)} | {_default(info)} | {_constraints(info)} | {doc} |")
        if model.__doc__:
            out += ["", model.__doc__.strip().splitlines()[0]]
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    print(render(), end="")
