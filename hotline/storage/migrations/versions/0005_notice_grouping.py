"""notice grouping: notices.held_until, notices.payload

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 15:20:00.000000
"""
from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('notices', schema=None) as batch_op:
        batch_op.add_column(sa.Column('held_until', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('payload', sa.JSON(), nullable=True))
        batch_op.create_index(batch_op.f('ix_notices_held_until'), ['held_until'], unique=False)
        batch_op.create_index('ix_notices_abuse_email', ['abuse_email'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('notices', schema=None) as batch_op:
        batch_op.drop_index('ix_notices_abuse_email')
        batch_op.drop_index(batch_op.f('ix_notices_held_until'))
        batch_op.drop_column('payload')
        batch_op.drop_column('held_until')
