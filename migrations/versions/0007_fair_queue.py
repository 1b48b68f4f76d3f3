"""jobs.priority and api_keys.weight: the fair queue's order (priority first, then weighted fair share per key)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07 17:00:00
"""

from alembic import op
import sqlalchemy as sa

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('jobs', sa.Column('priority', sa.SmallInteger(), server_default='1', nullable=False))
    op.add_column('api_keys', sa.Column('weight', sa.Float(), server_default='1', nullable=False))
    # The claim reads the queued jobs of a worker's models in fair order, and each key's recent starts.
    op.create_index('ix_jobs_queue', 'jobs', ['status', 'model', 'priority', 'created_at'])
    op.create_index('ix_jobs_model_started_at', 'jobs', ['model', 'started_at'])


def downgrade() -> None:
    op.drop_index('ix_jobs_model_started_at', table_name='jobs')
    op.drop_index('ix_jobs_queue', table_name='jobs')
    op.drop_column('api_keys', 'weight')
    op.drop_column('jobs', 'priority')
