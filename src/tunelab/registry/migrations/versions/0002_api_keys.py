"""API keys for the server: an HMAC of each key, its role, and when it was revoked or last used.

Revision ID: 0002
Revises: 0001
"""

from alembic import op
import sqlalchemy as sa

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("api_keys",
                    sa.Column("id", sa.String(length=16), nullable=False),
                    sa.Column("name", sa.String(length=200), nullable=False),
                    sa.Column("role", sa.String(length=20), nullable=False),
                    sa.Column("digest", sa.String(length=64), nullable=False),
                    sa.Column("created", sa.DateTime(timezone=True), nullable=False),
                    sa.Column("revoked", sa.DateTime(timezone=True), nullable=True),
                    sa.Column("last_used", sa.DateTime(timezone=True), nullable=True),
                    sa.PrimaryKeyConstraint("id"))


def downgrade() -> None:
    op.drop_table("api_keys")
