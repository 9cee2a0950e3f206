"""Device coordinators: one module per family, each running its driver's client under the gateway's TaskGroup.

`base.py` holds what they share (the health record, the weight sink the engine implements, the supervisor
that keeps one device's bug from stopping the others). The family modules are imported lazily by the gateway,
only when the store config names a device of that family: a Modbus-only gateway never loads bleak, biip or
pyserial (bench/bench_rss.py).
"""
