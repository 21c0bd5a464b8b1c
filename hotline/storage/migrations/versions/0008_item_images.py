"""item_images: the images an item showed, by SHA-256, so copies at other URLs are linked

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01 17:25:00.000000
"""
from alembic import op
import sqlalchemy as sa


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('item_images',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('item_id', sa.String(length=64), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('url', sa.Text(), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['item_id'], ['items.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('item_images', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_item_images_item_id'), ['item_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_item_images_sha256'), ['sha256'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('item_images', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_item_images_sha256'))
        batch_op.drop_index(batch_op.f('ix_item_images_item_id'))
    op.drop_table('item_images')
