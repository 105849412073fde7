"""Signed checkpoints of the audit log: (length, head hash, time) with an HMAC-SHA256 under the audit key.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("audit_checkpoints",
                    sa.Column("id", sa.Integer(), nullable=False),
                    sa.Column("log", sa.String(length=500), nullable=False),
                    sa.Column("length", sa.Integer(), nullable=False),
                    sa.Column("head", sa.String(length=64), nullable=False),
                    sa.Column("signed", sa.String(length=40), nullable=False),
                    sa.Column("mac", sa.String(length=64), nullable=False),
                    sa.PrimaryKeyConstraint("id"))
    with op.batch_alter_table("audit_checkpoints", schema=None) as batch_op:
        batch_op.create_index("ix_audit_checkpoints_log", ["log", "length"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("audit_checkpoints", schema=None) as batch_op:
        batch_op.drop_index("ix_audit_checkpoints_log")
    op.drop_table("audit_checkpoints")
