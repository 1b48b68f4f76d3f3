"""jobs.released_by: the worker whose lease was taken back, so that it may still record a result it finished

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26 16:30:00
"""

from alembic import op
import sqlalchemy as sa

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('jobs', sa.Column('released_by', sa.String(length=200), nullable=True))


def downgrade() -> None:
    op.drop_column('jobs', 'released_by')
