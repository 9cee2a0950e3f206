"""Device drivers: one package per family, each a sans-IO codec plus an async client.

Drivers import none of edge/, cloud_bridge/, hub/ (import-linter contract in pyproject.toml).
"""
