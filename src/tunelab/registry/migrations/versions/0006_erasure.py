"""GDPR erasure: the erasures table, and the marks it leaves on dataset versions, runs and model versions.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("erasures",
                    sa.Column("id", sa.String(length=32), nullable=False),
                    sa.Column("created", sa.DateTime(timezone=True), nullable=False),
                    sa.Column("selector", sa.String(length=64), nullable=False),
                    sa.Column("receipt", sa.JSON(), nullable=False),
                    sa.PrimaryKeyConstraint("id"))
    # plain ADD COLUMN (SQLite has it): a batch copy of dataset_versions would trip the runs' foreign keys
    op.add_column("dataset_versions", sa.Column("erased", sa.String(length=32), nullable=True))
    op.add_column("runs", sa.Column("tainted", sa.String(length=32), nullable=True))
    op.add_column("model_versions", sa.Column("tainted", sa.String(length=32), nullable=True))


def downgrade() -> None:
    # ALTER TABLE ... DROP COLUMN (SQLite 3.35+ and PostgreSQL), for the same reason as above
    for table, column in (("model_versions", "tainted"), ("runs", "tainted"), ("dataset_versions", "erased")):
        op.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
    op.drop_table("erasures")
