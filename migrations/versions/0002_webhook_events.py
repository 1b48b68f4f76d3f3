"""jobs.webhook_events: the webhook events a job asked for (NULL: the state changes only)

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 11:50:00
"""

from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('jobs', sa.Column('webhook_events', postgresql.JSONB(astext_type=sa.Text()), nullable=True))


def downgrade() -> None:
    op.drop_column('jobs', 'webhook_events')
