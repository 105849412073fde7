"""Encryption at rest, roles and the audit log: what sits under everything that writes user data."""
