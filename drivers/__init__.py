"""Device drivers: one package per family, each a sans-IO codec plus an async client. Imports none of edge/hub."""
