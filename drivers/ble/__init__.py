"""BLE shelf sensors broadcasting BTHome v2: advert codec, per-device keys, scanner seam and monitor."""
