"""The gateway: config, device coordinators, inventory engine, SQLite store, local API and pages."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("shelfgate")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+src"
