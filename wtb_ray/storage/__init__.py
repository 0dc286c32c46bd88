"""Persistence: tables, migrations, the store (checkpoints, boundaries, audit, outbox)."""
