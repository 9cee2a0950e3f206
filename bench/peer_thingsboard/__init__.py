"""shelfgate side by side with the ThingsBoard IoT gateway: same simulator, same broker, one command.

`bench/peer_thingsboard/run [--quick]` (or `.venv/bin/python -m bench.peer_thingsboard`) installs the peer
(PyPI `thingsboard-gateway`) into its own venv under a cache folder, then runs the peer and shelfgate in turn
against the same pymodbus simulator layout and the same private Mosquitto, and prints a table per load level.
See `docs/benchmarks-peer.md` for what is measured and why; `layout.py` for the shared device layout and
`accounting.py` for what a "reading" is on each side.
"""
