"""Modbus RTU/TCP weight transmitters: register codec, poll planner, bus client."""
