"""RFID: serial UHF modules (M100 / JRD-4035 family) — frame codec, SGTIN-96 decoding, presence windows, client.

`protocol` (frames) and `epc` (SGTIN-96) are sans-IO codecs, `presence` is pure logic, `client` owns a serial
port. LLRP fixed readers (sllurp, GPLv3) are an optional extra and not part of this package.
"""
