"""The registry: datasets, runs, evaluations and models, versioned, with lineage, cards and a promotion gate.

A SQLite file under ``$TUNELAB_HOME`` by default, PostgreSQL for a team (``TUNELAB_REGISTRY_URL``).
The CLI records prepares, runs, evaluations and sweeps as they happen; train/ never imports this package.
"""
