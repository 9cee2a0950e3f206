"""Device-side simulators speaking the real wire protocols, reusing drivers/*/protocol.py."""
