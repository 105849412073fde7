"""Alembic migrations of the registry schema (see registry/db.py)."""
