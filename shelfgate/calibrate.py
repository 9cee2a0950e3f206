"""`shelfgate calibrate BIN` — the calibration wizard in a terminal, against a running gateway's installer API.

    shelfgate calibrate A01 --url http://127.0.0.1:8080 --mass-g 2000 --installer li

Empty the plate → zero (waits for a stable reading) → place the known mass → span → check (re-read, compare with
the mass) → write. While it waits it shows the live weight and a stability indicator on one line. The wizard
itself runs in the gateway (`edge/calibration.py`, routes in `edge/installer.py`) so the page and this command
behave the same; this module only prompts and polls. Ctrl-C (or end of input) at any point cancels the session
on the gateway: the calibration is unchanged.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from typing import Any, Final, TextIO

import httpx

from shelfgate.exits import EXIT_BAD_INPUT, EXIT_FAILURE, EXIT_OK

EXIT_CANCELLED: Final = 130
"""128 + SIGINT, what a shell reports for a command stopped by Ctrl-C."""
POLL_S: Final = 0.25


class _Abort(Exception):
    """Stop the wizard with a message and an exit code (the session is cancelled)."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class CalibrateCli:
    """One interactive run; `out` is the terminal (tests read it through a pty)."""

    def __init__(self, args: argparse.Namespace, out: TextIO = sys.stdout) -> None:
        self.args = args
        self.bin_id: str = args.bin
        self.out = out
        self.http = httpx.Client(base_url=args.url.rstrip("/"), timeout=10.0)
        self.base = f"/api/installer/calibration/{self.bin_id}"

    def say(self, text: str = "", end: str = "\n") -> None:
        self.out.write(text + end)
        self.out.flush()

    def ask(self, prompt: str) -> str:
        self.say(prompt, end="")
        line = sys.stdin.readline()
        if not line:
            raise EOFError
        return line.strip()

    def call(self, method: str, path: str = "", body: dict[str, Any] | None = None) -> dict[str, Any]:
        try:
            r = self.http.request(method, self.base + path, json=body)
        except httpx.HTTPError as exc:
            raise _Abort(f"cannot reach the gateway at {self.args.url}: {exc}", EXIT_FAILURE) from exc
        if r.status_code >= 400:
            try:
                detail = r.json().get("detail", r.text)
            except ValueError:
                detail = r.text
            code = EXIT_BAD_INPUT if r.status_code in (404, 422) else EXIT_FAILURE
            raise _Abort(f"gateway: {detail}", code)
        data: dict[str, Any] = r.json()
        return data

    def wait(self, steps: set[str]) -> dict[str, Any]:
        """Poll until the wizard reaches one of `steps`, showing live weight and stability on one line."""
        deadline = time.monotonic() + self.args.wait_s
        while True:
            st = self.call("GET")
            live = st.get("live_g")
            weight = "   ---   " if live is None else f"{live:9.1f}"
            mark = "stable" if st.get("stable") else (st.get("unstable_reason") or "waiting")
            self.say(f"\r  live {weight} g   [{mark:<15}]", end="")
            if st["step"] in steps or st["step"] == "failed":
                self.say()
                if st["step"] == "failed":
                    raise _Abort(f"failed: {st.get('error') or st.get('prompt')}", EXIT_FAILURE)
                return st
            if time.monotonic() > deadline:
                self.say()
                raise _Abort(f"no stable reading within {self.args.wait_s:g} s", EXIT_FAILURE)
            time.sleep(POLL_S)

    def run(self) -> int:
        try:
            return self._run()
        except (KeyboardInterrupt, EOFError):
            self._cancel()
            self.say(f"\nCancelled: the calibration of {self.bin_id} is unchanged.")
            return EXIT_CANCELLED
        except _Abort as exc:
            self._cancel()
            self.say(f"\n{exc}\nThe calibration of {self.bin_id} is unchanged.")
            return exc.code
        finally:
            self.http.close()

    def _cancel(self) -> None:
        # A gateway that is gone wrote nothing either.
        with contextlib.suppress(httpx.HTTPError):
            self.http.request("DELETE", self.base, timeout=3.0)

    def _run(self) -> int:
        a = self.args
        st = self.call(
            "POST",
            body={
                "installer": a.installer,
                "tare_on_plate": not a.tray_off,
                "tolerance_pct": a.tolerance_pct,
                "tolerance_g": a.tolerance_g,
            },
        )
        before = st["before"]
        self.say(
            f"Calibrating bin {self.bin_id} (zero {before['zero']:g}, span {before['span_g_per_unit']:g} g/unit)"
        )
        tray = "remove the tray" if a.tray_off else "leave the tray on it"
        self.ask(f"1/3 Empty the plate ({tray}), then press Enter: ")
        self.call("POST", "/empty")
        self.wait({"load"})
        self.say("    zero taken.")
        if a.mass_g is None:
            mass_g = self._ask_mass()
        else:
            mass_g = float(a.mass_g)
            self.ask(f"2/3 Place {mass_g:g} g on the plate, then press Enter: ")
        self.call("POST", "/loaded", {"mass_g": mass_g})
        st = self.wait({"checked"})
        return self._finish(st)

    def _ask_mass(self) -> float:
        while True:
            text = self.ask("2/3 Place a known mass on the plate and type its mass in g: ")
            try:
                mass = float(text.replace(",", "."))
            except ValueError:
                self.say(f"    not a number: {text!r}")
                continue
            if mass > 0:
                return mass
            self.say("    the mass must be positive")

    def _finish(self, st: dict[str, Any]) -> int:
        c = st["check"]
        b, n = st["before"], st["after"]
        verdict = "OK" if c["ok"] else "FAILED"
        self.say(
            f"3/3 Check: {c['measured_g']:.2f} g for {c['mass_g']:g} g: error {c['error_g']:+.2f} g"
            f" ({c['error_pct']:+.3f} %), tolerance ±{c['tolerance_g']:.2f} g: {verdict}"
        )
        self.say(f"    zero            {b['zero']:>14.6g} → {n['zero']:.6g}")
        self.say(f"    span_g_per_unit {b['span_g_per_unit']:>14.6g} → {n['span_g_per_unit']:.6g}")
        question = (
            "Write this calibration? [y/N] " if c["ok"] else "The check FAILED. Write it anyway? [y/N] "
        )
        answer = "y" if self.args.yes and c["ok"] else self.ask(question)
        if answer.lower() not in ("y", "yes"):
            self._cancel()
            self.say(f"Not written: the calibration of {self.bin_id} is unchanged.")
            return EXIT_FAILURE
        out = self.call("POST", "/apply", {"force": not c["ok"]})
        self.say(
            f"Written: bin {self.bin_id} calibrated at {out['after']['calibrated_at']} (audit recorded)."
        )
        return EXIT_OK


def _calibrate(args: argparse.Namespace) -> int:
    return CalibrateCli(args).run()


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `shelfgate calibrate`."""
    c = sub.add_parser("calibrate", help="calibrate a bin's plate interactively against a running gateway")
    c.add_argument("bin", help="bin id, e.g. A01")
    c.add_argument("--url", default="http://127.0.0.1:8080", help="the gateway's API (default %(default)s)")
    c.add_argument("--mass-g", type=float, default=None, help="the known mass in grams (asked when absent)")
    c.add_argument("--installer", default="installer", help="who calibrates (kept in the audit trail)")
    c.add_argument("--tolerance-pct", type=float, default=0.5, help="check tolerance, %% of the mass")
    c.add_argument("--tolerance-g", type=float, default=1.0, help="check tolerance floor, grams")
    c.add_argument("--tray-off", action="store_true", help="the tray is removed for zeroing")
    c.add_argument(
        "--wait-s", type=float, default=120.0, help="give up waiting for a stable reading after this"
    )
    c.add_argument("--yes", action="store_true", help="write without asking when the check passes")
    c.set_defaults(func=_calibrate)
