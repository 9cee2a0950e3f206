"""sllurp is an optional extra (GPLv3): the RFID package must import and explain itself without it.

These run in every install. sllurp is hidden from a fresh interpreter with `sys.modules['sllurp'] = None`
(which makes `import sllurp` fail exactly as when it is not installed), so the result does not depend on
whether this venv has the extra.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).parents[3]

HIDDEN_SLLURP = textwrap.dedent(
    """
    import json, sys
    sys.modules["sllurp"] = None
    sys.modules["sllurp.llrp"] = None

    import drivers.rfid
    from drivers.rfid import presence, epc, client
    import drivers.rfid.llrp as llrp

    out = {"available": drivers.rfid.sllurp_available(), "lazy_name": drivers.rfid.LlrpReaderClient.__name__}
    try:
        llrp.LlrpReaderClient("127.0.0.1", "dock-1")
    except drivers.rfid.LlrpSupportMissing as exc:
        out["error"] = str(exc)
        out["is_import_error"] = isinstance(exc, ImportError)
    out["sllurp_loaded"] = any(
        name.startswith("sllurp") and mod is not None for name, mod in sys.modules.items()
    )
    print(json.dumps(out))
    """
)


def test_rfid_package_imports_and_names_the_extra_without_sllurp() -> None:
    result = subprocess.run(
        [sys.executable, "-c", HIDDEN_SLLURP],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["available"] is False
    assert out["lazy_name"] == "LlrpReaderClient"
    assert "pip install 'shelfgate[llrp]'" in out["error"]
    assert "GPLv3" in out["error"]
    assert out["is_import_error"] is True
    assert out["sllurp_loaded"] is False


def test_importing_drivers_rfid_does_not_import_sllurp() -> None:
    script = (
        "import sys, drivers.rfid, drivers.rfid.llrp; print(any(m.startswith('sllurp') for m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
