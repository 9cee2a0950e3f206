"""Barcode scanners in serial/USB-CDC mode: line codec with AIM ids, GS1 and member codes, async client."""
