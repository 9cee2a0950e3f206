"""The gateway: config, device coordinators, inventory engine, SQLite store, local API and pages."""
