"""idempotency_keys.job_id: the job a keyed submit created, linked in the job's own transaction

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26 17:00:00
"""

from alembic import op
import sqlalchemy as sa

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('idempotency_keys', sa.Column('job_id', sa.UUID(), nullable=True))
    op.create_foreign_key(
        'idempotency_keys_job_id_fkey', 'idempotency_keys', 'jobs', ['job_id'], ['id'], ondelete='CASCADE'
    )


def downgrade() -> None:
    op.drop_constraint('idempotency_keys_job_id_fkey', 'idempotency_keys', type_='foreignkey')
    op.drop_column('idempotency_keys', 'job_id')
