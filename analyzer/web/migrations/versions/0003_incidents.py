"""Incidents: two captures of one incident (client side and server side) merged by a background job
(``analyzer.web.incidents``, issue 13).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "incidents",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
        sa.Column("capture_a", sa.String(32), sa.ForeignKey("captures.id", ondelete="CASCADE"), nullable=False),
        sa.Column("capture_b", sa.String(32), sa.ForeignKey("captures.id", ondelete="CASCADE"), nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("finished_at", sa.DateTime, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("result_json", sa.Text, nullable=True),
    )
    for column in ("user_id", "capture_a", "capture_b", "created_at", "status"):
        op.create_index(f"ix_incidents_{column}", "incidents", [column])


def downgrade() -> None:
    op.drop_table("incidents")
