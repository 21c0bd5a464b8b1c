"""hosting cache: DNS and RDAP answers with their time of look-up and expiry; the ladder's
upstream and registrar contacts on follow-ups (issue 10)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 17:05:00.000000
"""
from alembic import op
import sqlalchemy as sa


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('hosting_cache',
    sa.Column('key', sa.String(length=400), nullable=False),
    sa.Column('value', sa.JSON(), nullable=False),
    sa.Column('source', sa.String(length=32), nullable=False),
    sa.Column('looked_up_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('key')
    )
    with op.batch_alter_table('hosting_cache', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_hosting_cache_expires_at'), ['expires_at'], unique=False)
    with op.batch_alter_table('followups', schema=None) as batch_op:
        batch_op.add_column(sa.Column('upstream_abuse', sa.String(length=320), nullable=True))
        batch_op.add_column(sa.Column('registrar_abuse', sa.String(length=320), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('followups', schema=None) as batch_op:
        batch_op.drop_column('registrar_abuse')
        batch_op.drop_column('upstream_abuse')
    with op.batch_alter_table('hosting_cache', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_hosting_cache_expires_at'))
    op.drop_table('hosting_cache')
