"""The server's records: every served response, the feedback on them, and A/B tests between models.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("served_responses",
                    sa.Column("id", sa.String(length=64), nullable=False),
                    sa.Column("created", sa.DateTime(timezone=True), nullable=False),
                    sa.Column("endpoint", sa.String(length=20), nullable=False),
                    sa.Column("model", sa.String(length=200), nullable=False),
                    sa.Column("served_model", sa.String(length=200), nullable=False),
                    sa.Column("model_version", sa.String(length=200), nullable=True),
                    sa.Column("ab_test", sa.String(length=200), nullable=True),
                    sa.Column("arm", sa.String(length=200), nullable=True),
                    sa.Column("key_id", sa.String(length=16), nullable=True),
                    sa.Column("user_hash", sa.String(length=64), nullable=True),
                    sa.Column("prompt", sa.JSON(), nullable=False),
                    sa.Column("response", sa.JSON(), nullable=False),
                    sa.Column("prompt_tokens", sa.Integer(), nullable=False),
                    sa.Column("completion_tokens", sa.Integer(), nullable=False),
                    sa.Column("latency_ms", sa.Float(), nullable=False),
                    sa.Column("finish_reasons", sa.JSON(), nullable=False),
                    sa.PrimaryKeyConstraint("id"))
    with op.batch_alter_table("served_responses", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_served_responses_ab_test"), ["ab_test"], unique=False)
        batch_op.create_index(batch_op.f("ix_served_responses_user_hash"), ["user_hash"], unique=False)

    op.create_table("feedback",
                    sa.Column("id", sa.Integer(), nullable=False),
                    sa.Column("response_id", sa.String(length=64), nullable=False),
                    sa.Column("created", sa.DateTime(timezone=True), nullable=False),
                    sa.Column("rating", sa.String(length=8), nullable=True),
                    sa.Column("score", sa.Integer(), nullable=True),
                    sa.Column("corrected", sa.Text(), nullable=True),
                    sa.Column("comment", sa.Text(), nullable=True),
                    sa.Column("key_id", sa.String(length=16), nullable=True),
                    sa.Column("user_hash", sa.String(length=64), nullable=True),
                    sa.ForeignKeyConstraint(["response_id"], ["served_responses.id"], ondelete="CASCADE"),
                    sa.PrimaryKeyConstraint("id"))
    with op.batch_alter_table("feedback", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_feedback_response_id"), ["response_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_feedback_user_hash"), ["user_hash"], unique=False)

    op.create_table("ab_tests",
                    sa.Column("name", sa.String(length=200), nullable=False),
                    sa.Column("arms", sa.JSON(), nullable=False),
                    sa.Column("created", sa.DateTime(timezone=True), nullable=False),
                    sa.Column("ended", sa.DateTime(timezone=True), nullable=True),
                    sa.Column("created_by", sa.String(length=16), nullable=True),
                    sa.PrimaryKeyConstraint("name"))


def downgrade() -> None:
    op.drop_table("ab_tests")
    with op.batch_alter_table("feedback", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_feedback_user_hash"))
        batch_op.drop_index(batch_op.f("ix_feedback_response_id"))
    op.drop_table("feedback")
    with op.batch_alter_table("served_responses", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_served_responses_user_hash"))
        batch_op.drop_index(batch_op.f("ix_served_responses_ab_test"))
    op.drop_table("served_responses")
