"""The example catalogue fixture of the retail tests, shared with the lane wiring tests."""

from tests.edge.retail.conftest import catalogue

__all__ = ["catalogue"]
