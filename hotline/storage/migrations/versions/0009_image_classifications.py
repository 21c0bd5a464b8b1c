"""assessments: per-image classifications (ICCAM fields), answers to the hotline's questions,
the bank entries a decision added, and which assessment a senior analyst's change replaces

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01 17:50:00.000000
"""
from alembic import op
import sqlalchemy as sa


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('assessments', schema=None) as batch_op:
        batch_op.add_column(sa.Column('images', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('answers', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('bank_entry_ids', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('replaces_id', sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('assessments', schema=None) as batch_op:
        batch_op.drop_column('replaces_id')
        batch_op.drop_column('bank_entry_ids')
        batch_op.drop_column('answers')
        batch_op.drop_column('images')
