"""Index captures (user_id, uploaded_at): a user's list, newest first and paged, is read in index order instead
of sorting all of that user's rows on every page (and the per-user queue length of /metrics uses it too).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_captures_user_uploaded", "captures", ["user_id", "uploaded_at"])


def downgrade() -> None:
    op.drop_index("ix_captures_user_uploaded", table_name="captures")
