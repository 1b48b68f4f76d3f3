"""webhook_endpoints: webhook URLs disabled after a 410 Gone

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26 14:00:00
"""

from alembic import op
import sqlalchemy as sa

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('webhook_endpoints',
    sa.Column('url', sa.Text(), nullable=False),
    sa.Column('disabled_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('url')
    )


def downgrade() -> None:
    op.drop_table('webhook_endpoints')
