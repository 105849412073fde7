"""Four roles instead of two: API keys with role ``user`` become ``inference`` (what ``user`` could do).

Down again, ``inference`` becomes ``user``; ``trainer`` and ``viewer`` keys are left as they are, and a
server of the older release, which knows only ``admin`` and ``user``, refuses them on every route (its
table denies what it does not name), so going down never gives a key more than it had.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

api_keys = sa.table("api_keys", sa.column("role", sa.String(20)))


def upgrade() -> None:
    op.execute(api_keys.update().where(api_keys.c.role == "user").values(role="inference"))


def downgrade() -> None:
    op.execute(api_keys.update().where(api_keys.c.role == "inference").values(role="user"))
