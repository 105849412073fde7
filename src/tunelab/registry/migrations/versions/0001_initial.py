"""The initial schema: datasets with row manifests, runs with metric series and artifacts, evaluations
with per-item results, models with versions, aliases and alias events.

Revision ID: 0001
Revises: 
Create Date: 2026-12-05 19:17:48.995500
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("datasets",
    sa.Column("id", sa.Integer(), nullable=False),
    sa.Column("name", sa.String(length=200), nullable=False),
    sa.Column("created", sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint("id"),
    sa.UniqueConstraint("name")
    )
    op.create_table("models",
    sa.Column("id", sa.Integer(), nullable=False),
    sa.Column("name", sa.String(length=200), nullable=False),
    sa.Column("created", sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint("id"),
    sa.UniqueConstraint("name")
    )
    op.create_table("dataset_versions",
    sa.Column("id", sa.Integer(), nullable=False),
    sa.Column("dataset_id", sa.Integer(), nullable=False),
    sa.Column("version", sa.Integer(), nullable=False),
    sa.Column("content_hash", sa.String(length=64), nullable=False),
    sa.Column("kind", sa.String(length=20), nullable=True),
    sa.Column("rows", sa.JSON(), nullable=False),
    sa.Column("path", sa.Text(), nullable=True),
    sa.Column("origin", sa.String(length=20), nullable=False),
    sa.Column("settings", sa.JSON(), nullable=True),
    sa.Column("report", sa.JSON(), nullable=True),
    sa.Column("created", sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(["dataset_id"], ["datasets.id"], ondelete="CASCADE"),
    sa.PrimaryKeyConstraint("id"),
    sa.UniqueConstraint("content_hash"),
    sa.UniqueConstraint("dataset_id", "version")
    )
    with op.batch_alter_table("dataset_versions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_dataset_versions_dataset_id"), ["dataset_id"], unique=False)

    op.create_table("dataset_rows",
    sa.Column("version_id", sa.Integer(), nullable=False),
    sa.Column("split", sa.String(length=8), nullable=False),
    sa.Column("position", sa.Integer(), nullable=False),
    sa.Column("row_hash", sa.String(length=64), nullable=False),
    sa.ForeignKeyConstraint(["version_id"], ["dataset_versions.id"], ondelete="CASCADE"),
    sa.PrimaryKeyConstraint("version_id", "split", "position")
    )
    with op.batch_alter_table("dataset_rows", schema=None) as batch_op:
        batch_op.create_index("ix_dataset_rows_hash", ["row_hash"], unique=False)

    op.create_table("runs",
    sa.Column("id", sa.String(length=32), nullable=False),
    sa.Column("name", sa.String(length=200), nullable=False),
    sa.Column("path", sa.Text(), nullable=False),
    sa.Column("status", sa.String(length=12), nullable=False),
    sa.Column("pid", sa.Integer(), nullable=True),
    sa.Column("host", sa.String(length=255), nullable=True),
    sa.Column("started", sa.Float(), nullable=True),
    sa.Column("ended", sa.Float(), nullable=True),
    sa.Column("reason", sa.Text(), nullable=True),
    sa.Column("last_step", sa.Integer(), nullable=True),
    sa.Column("task", sa.String(length=20), nullable=True),
    sa.Column("method", sa.String(length=20), nullable=True),
    sa.Column("base_model", sa.Text(), nullable=True),
    sa.Column("seed", sa.Integer(), nullable=True),
    sa.Column("config", sa.JSON(), nullable=True),
    sa.Column("packages", sa.JSON(), nullable=True),
    sa.Column("git_commit", sa.String(length=64), nullable=True),
    sa.Column("hardware", sa.JSON(), nullable=True),
    sa.Column("metrics", sa.JSON(), nullable=True),
    sa.Column("sweep", sa.String(length=200), nullable=True),
    sa.Column("dataset_version_id", sa.Integer(), nullable=True),
    sa.Column("created", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated", sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(["dataset_version_id"], ["dataset_versions.id"], ),
    sa.PrimaryKeyConstraint("id"),
    sa.UniqueConstraint("path")
    )
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_runs_dataset_version_id"), ["dataset_version_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_runs_name"), ["name"], unique=False)

    op.create_table("artifacts",
    sa.Column("run_id", sa.String(length=32), nullable=False),
    sa.Column("path", sa.String(length=500), nullable=False),
    sa.Column("bytes", sa.Integer(), nullable=False),
    sa.Column("sha256", sa.String(length=64), nullable=False),
    sa.ForeignKeyConstraint(["run_id"], ["runs.id"], ondelete="CASCADE"),
    sa.PrimaryKeyConstraint("run_id", "path")
    )
    op.create_table("evaluations",
    sa.Column("id", sa.Integer(), nullable=False),
    sa.Column("model_key", sa.String(length=200), nullable=False),
    sa.Column("run_id", sa.String(length=32), nullable=True),
    sa.Column("arm", sa.String(length=20), nullable=False),
    sa.Column("eval_set_hash", sa.String(length=64), nullable=False),
    sa.Column("eval_set_path", sa.Text(), nullable=True),
    sa.Column("code_version", sa.String(length=100), nullable=False),
    sa.Column("metrics", sa.JSON(), nullable=False),
    sa.Column("created", sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(["run_id"], ["runs.id"], ondelete="CASCADE"),
    sa.PrimaryKeyConstraint("id")
    )
    with op.batch_alter_table("evaluations", schema=None) as batch_op:
        batch_op.create_index("ix_evaluations_lookup", ["model_key", "eval_set_hash", "code_version"], unique=False)
        batch_op.create_index(batch_op.f("ix_evaluations_run_id"), ["run_id"], unique=False)

    op.create_table("metric_points",
    sa.Column("run_id", sa.String(length=32), nullable=False),
    sa.Column("step", sa.Integer(), nullable=False),
    sa.Column("name", sa.String(length=64), nullable=False),
    sa.Column("value", sa.Float(), nullable=False),
    sa.ForeignKeyConstraint(["run_id"], ["runs.id"], ondelete="CASCADE"),
    sa.PrimaryKeyConstraint("run_id", "step", "name")
    )
    op.create_table("model_versions",
    sa.Column("id", sa.Integer(), nullable=False),
    sa.Column("model_id", sa.Integer(), nullable=False),
    sa.Column("version", sa.Integer(), nullable=False),
    sa.Column("run_id", sa.String(length=32), nullable=False),
    sa.Column("artifact_path", sa.Text(), nullable=False),
    sa.Column("artifact_sha256", sa.String(length=64), nullable=False),
    sa.Column("tags", sa.JSON(), nullable=False),
    sa.Column("card", sa.Text(), nullable=True),
    sa.Column("last_gate", sa.JSON(), nullable=True),
    sa.Column("created", sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(["model_id"], ["models.id"], ondelete="CASCADE"),
    sa.ForeignKeyConstraint(["run_id"], ["runs.id"], ),
    sa.PrimaryKeyConstraint("id"),
    sa.UniqueConstraint("model_id", "version")
    )
    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_model_versions_model_id"), ["model_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_model_versions_run_id"), ["run_id"], unique=False)

    op.create_table("alias_events",
    sa.Column("id", sa.Integer(), nullable=False),
    sa.Column("model_id", sa.Integer(), nullable=False),
    sa.Column("alias", sa.String(length=64), nullable=False),
    sa.Column("action", sa.String(length=16), nullable=False),
    sa.Column("version_id", sa.Integer(), nullable=True),
    sa.Column("previous_version_id", sa.Integer(), nullable=True),
    sa.Column("forced", sa.Boolean(), nullable=False),
    sa.Column("reason", sa.Text(), nullable=True),
    sa.Column("gate", sa.JSON(), nullable=True),
    sa.Column("created", sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(["model_id"], ["models.id"], ondelete="CASCADE"),
    sa.ForeignKeyConstraint(["previous_version_id"], ["model_versions.id"], ),
    sa.ForeignKeyConstraint(["version_id"], ["model_versions.id"], ),
    sa.PrimaryKeyConstraint("id")
    )
    with op.batch_alter_table("alias_events", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_alias_events_model_id"), ["model_id"], unique=False)

    op.create_table("aliases",
    sa.Column("model_id", sa.Integer(), nullable=False),
    sa.Column("alias", sa.String(length=64), nullable=False),
    sa.Column("version_id", sa.Integer(), nullable=False),
    sa.Column("updated", sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(["model_id"], ["models.id"], ondelete="CASCADE"),
    sa.ForeignKeyConstraint(["version_id"], ["model_versions.id"], ),
    sa.PrimaryKeyConstraint("model_id", "alias")
    )
    op.create_table("eval_items",
    sa.Column("evaluation_id", sa.Integer(), nullable=False),
    sa.Column("position", sa.Integer(), nullable=False),
    sa.Column("item_hash", sa.String(length=64), nullable=False),
    sa.Column("prediction", sa.Text(), nullable=True),
    sa.Column("correct", sa.Boolean(), nullable=True),
    sa.Column("score", sa.Float(), nullable=True),
    sa.ForeignKeyConstraint(["evaluation_id"], ["evaluations.id"], ondelete="CASCADE"),
    sa.PrimaryKeyConstraint("evaluation_id", "position")
    )
    with op.batch_alter_table("eval_items", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_eval_items_item_hash"), ["item_hash"], unique=False)



def downgrade() -> None:
    with op.batch_alter_table("eval_items", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_eval_items_item_hash"))

    op.drop_table("eval_items")
    op.drop_table("aliases")
    with op.batch_alter_table("alias_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_alias_events_model_id"))

    op.drop_table("alias_events")
    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_model_versions_run_id"))
        batch_op.drop_index(batch_op.f("ix_model_versions_model_id"))

    op.drop_table("model_versions")
    op.drop_table("metric_points")
    with op.batch_alter_table("evaluations", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_evaluations_run_id"))
        batch_op.drop_index("ix_evaluations_lookup")

    op.drop_table("evaluations")
    op.drop_table("artifacts")
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_runs_name"))
        batch_op.drop_index(batch_op.f("ix_runs_dataset_version_id"))

    op.drop_table("runs")
    with op.batch_alter_table("dataset_rows", schema=None) as batch_op:
        batch_op.drop_index("ix_dataset_rows_hash")

    op.drop_table("dataset_rows")
    with op.batch_alter_table("dataset_versions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_dataset_versions_dataset_id"))

    op.drop_table("dataset_versions")
    op.drop_table("models")
    op.drop_table("datasets")
