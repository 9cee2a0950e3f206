"""Composition root: the `shelfgate` command wires gateway, hub and simulators together."""
