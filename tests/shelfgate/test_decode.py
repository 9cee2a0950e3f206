"""`shelfgate decode`: JSON on stdout for good input, exit 2 with one line for bad input."""

from __future__ import annotations

import json

import pytest

from shelfgate.cli import main


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, object] | None, str]:
    code = main(["decode", *argv])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if out.strip() else None), err


@pytest.mark.parametrize(
    ("argv", "value"),
    [
        # float32 word-order reference from tests/vectors/modbus_rtu_weight_transmitter.json
        (["0x4145,0x851f", "--type", "float32", "--word-order", "ABCD"], 12.345000267),
        (["0x851f,0x4145", "--type", "float32", "--word-order", "CDAB"], 12.345000267),
        (["0x4541,0x1f85", "--type", "float32", "--word-order", "BADC"], 12.345000267),
        (["0x1f85,0x4541", "--type", "float32", "--word-order", "DCBA"], 12.345000267),
        # read_net_resp: int32 0xFFFFC1EF = -15889, two decimals → -158.89
        (["0xffff 0xc1ef", "--scale", "0.01"], -158.89),
        (["0,354"], 354.0),
        (["2050", "--type", "uint16"], 2050.0),
    ],
)
def test_modbus_words(capsys: pytest.CaptureFixture[str], argv: list[str], value: float) -> None:
    code, out, err = _run(capsys, "modbus", *argv)
    assert (code, err) == (0, "")
    assert out == {"value": value}


@pytest.mark.parametrize(
    ("argv", "reason"),
    [
        (["0x1,0x2,0x3"], "int32 needs 2 registers, got 3"),
        (["zz"], "'zz' is not a register word"),
        (["0x10000,1"], "not a 16-bit register word"),
        (["0x7fc0,0x0000", "--type", "float32"], "decode to nan"),
    ],
)
def test_modbus_bad_input_is_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], reason: str
) -> None:
    code, out, err = _run(capsys, "modbus", *argv)
    assert code == 2
    assert out is None
    assert reason in err
    assert err.count("\n") == 1


# One case per device family through the CLI; the codecs' own tests run every vector.
@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (  # tests/vectors/sgtin96.json, first vector (GS1 TDS example)
            ["sgtin", "3034257BF7194E4000001A85"],
            {
                "gtin": "80614141123458",
                "serial": "6789",
                "filter": 1,
                "company_prefix": "0614141",
                "item_reference": "812345",
                "tag_uri": "urn:epc:tag:sgtin-96:1.0614141.812345.6789",
            },
        ),
        (
            ["gs1", "(01)07032069804988(15)210526(10)0329"],
            {"gtin": "07032069804988", "batch": "0329", "hri": "(01)07032069804988(15)210526(10)0329"},
        ),
        (["mtsics", "S S     100.00 g"], {"weight": 100.0, "unit": "g", "stable": True, "status": "S"}),
        (
            ["bthome", "d2fc4000c3020b0c"],
            {"measurements": {"temperature_c": 30.83}, "encrypted": False, "packet_id": 195},
        ),
    ],
)
def test_each_family(
    capsys: pytest.CaptureFixture[str], argv: list[str], expected: dict[str, object]
) -> None:
    code, out, err = _run(capsys, *argv)
    assert (code, err) == (0, "")
    assert out == expected


def test_nci_and_m100_shapes(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "nci", "0a2020312e32356c620d0a30300d03")
    assert code == 0
    assert out is not None
    assert (out["weight"], out["unit"], out["stable"]) == (1.25, "lb", True)
    code, out, _ = _run(capsys, "m100", "bb00220000227e")
    assert code == 0
    assert out is not None
    assert (out["type"], out["command"]) == ("command", 0x22)


@pytest.mark.parametrize(
    ("argv", "reason"),
    [
        (["sgtin", "F45349FB11DF49FA935AB6FF"], "not an SGTIN-96"),
        (["bthome", "41d2fcefe52eb212d600112233bc38c966"], "--key and --mac needed"),
        (["m100", "bb00220000237e"], ""),
        (["gs1", "(01)07032069804989"], ""),
    ],
)
def test_family_bad_input(capsys: pytest.CaptureFixture[str], argv: list[str], reason: str) -> None:
    code, out, err = _run(capsys, *argv)
    assert code == 2
    assert out is None
    assert err.startswith(f"shelfgate decode {argv[0]}: ")
    assert reason in err
    assert err.count("\n") == 1
