"""Blind human review: the pairs of answers handed to reviewers, and the preferences they gave.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("review_pairs",
                    sa.Column("id", sa.String(length=32), nullable=False),
                    sa.Column("first_model", sa.String(length=200), nullable=False),
                    sa.Column("second_model", sa.String(length=200), nullable=False),
                    sa.Column("item_hash", sa.String(length=64), nullable=False),
                    sa.Column("prompt", sa.Text(), nullable=False),
                    sa.Column("first_answer", sa.Text(), nullable=False),
                    sa.Column("second_answer", sa.Text(), nullable=False),
                    sa.Column("left", sa.String(length=8), nullable=False),
                    sa.Column("created", sa.DateTime(timezone=True), nullable=False),
                    sa.Column("reviewer", sa.String(length=200), nullable=True),
                    sa.Column("decided", sa.DateTime(timezone=True), nullable=True),
                    sa.PrimaryKeyConstraint("id"))
    with op.batch_alter_table("review_pairs", schema=None) as batch_op:
        batch_op.create_index("ix_review_pairs_models", ["first_model", "second_model"], unique=False)

    op.create_table("review_preferences",
                    sa.Column("id", sa.Integer(), nullable=False),
                    sa.Column("pair_id", sa.String(length=32), nullable=False),
                    sa.Column("reviewer", sa.String(length=200), nullable=False),
                    sa.Column("choice", sa.String(length=8), nullable=False),
                    sa.Column("winner", sa.String(length=8), nullable=False),
                    sa.Column("first_model", sa.String(length=200), nullable=False),
                    sa.Column("second_model", sa.String(length=200), nullable=False),
                    sa.Column("prompt", sa.Text(), nullable=False),
                    sa.Column("chosen", sa.Text(), nullable=False),
                    sa.Column("rejected", sa.Text(), nullable=False),
                    sa.Column("created", sa.DateTime(timezone=True), nullable=False),
                    sa.ForeignKeyConstraint(["pair_id"], ["review_pairs.id"], ondelete="CASCADE"),
                    sa.PrimaryKeyConstraint("id"))
    with op.batch_alter_table("review_preferences", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_review_preferences_pair_id"), ["pair_id"], unique=True)


def downgrade() -> None:
    with op.batch_alter_table("review_preferences", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_review_preferences_pair_id"))
    op.drop_table("review_preferences")
    with op.batch_alter_table("review_pairs", schema=None) as batch_op:
        batch_op.drop_index("ix_review_pairs_models")
    op.drop_table("review_pairs")
