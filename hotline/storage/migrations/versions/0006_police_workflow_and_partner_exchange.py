"""police workflow and partner exchange: escalation states (received, on hold, released,
release due), forwards as a durable delivery queue, what partners reported back, status
updates to partners, partner accounts bound to a country, reports' partner country

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 16:47:27.897947
"""
from alembic import op
import sqlalchemy as sa


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('partner_updates',
    sa.Column('id', sa.String(length=160), nullable=False),
    sa.Column('country', sa.String(length=2), nullable=False),
    sa.Column('report_id', sa.String(length=64), nullable=False),
    sa.Column('item_id', sa.String(length=64), nullable=True),
    sa.Column('action', sa.String(length=16), nullable=False),
    sa.Column('payload', sa.JSON(), nullable=False),
    sa.Column('status', sa.String(length=32), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('next_attempt_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('dispatched_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('sent_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['report_id'], ['reports.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('partner_updates', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_partner_updates_country'), ['country'], unique=False)
        batch_op.create_index(batch_op.f('ix_partner_updates_next_attempt_at'), ['next_attempt_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_partner_updates_report_id'), ['report_id'], unique=False)

    op.create_table('forward_statuses',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('forward_id', sa.String(length=64), nullable=False),
    sa.Column('action', sa.String(length=8), nullable=False),
    sa.Column('note', sa.Text(), nullable=True),
    sa.Column('by', sa.String(length=100), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['forward_id'], ['forwards.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('forward_statuses', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_forward_statuses_forward_id'), ['forward_id'], unique=False)

    with op.batch_alter_table('escalations', schema=None) as batch_op:
        batch_op.add_column(sa.Column('state', sa.String(length=16), nullable=False, server_default='new'))
        batch_op.add_column(sa.Column('received_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('received_by', sa.String(length=100), nullable=True))
        batch_op.add_column(sa.Column('held_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('held_by', sa.String(length=100), nullable=True))
        batch_op.add_column(sa.Column('hold_reason', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('released_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('released_by', sa.String(length=100), nullable=True))
        batch_op.add_column(sa.Column('release_due_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('outcome', sa.Text(), nullable=True))
        batch_op.create_index(batch_op.f('ix_escalations_release_due_at'), ['release_due_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_escalations_state'), ['state'], unique=False)

    with op.batch_alter_table('forwards', schema=None) as batch_op:
        batch_op.add_column(sa.Column('payload', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('created_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('next_attempt_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('dispatched_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('partner_status', sa.String(length=8), nullable=True))
        batch_op.add_column(sa.Column('partner_status_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index(batch_op.f('ix_forwards_next_attempt_at'), ['next_attempt_at'], unique=False)

    with op.batch_alter_table('reports', schema=None) as batch_op:
        batch_op.add_column(sa.Column('partner_country', sa.String(length=2), nullable=True))

    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.add_column(sa.Column('country', sa.String(length=2), nullable=True))



def downgrade() -> None:
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.drop_column('country')

    with op.batch_alter_table('reports', schema=None) as batch_op:
        batch_op.drop_column('partner_country')

    with op.batch_alter_table('forwards', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_forwards_next_attempt_at'))
        batch_op.drop_column('partner_status_at')
        batch_op.drop_column('partner_status')
        batch_op.drop_column('dispatched_at')
        batch_op.drop_column('next_attempt_at')
        batch_op.drop_column('created_at')
        batch_op.drop_column('payload')

    with op.batch_alter_table('escalations', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_escalations_state'))
        batch_op.drop_index(batch_op.f('ix_escalations_release_due_at'))
        batch_op.drop_column('outcome')
        batch_op.drop_column('release_due_at')
        batch_op.drop_column('released_by')
        batch_op.drop_column('released_at')
        batch_op.drop_column('hold_reason')
        batch_op.drop_column('held_by')
        batch_op.drop_column('held_at')
        batch_op.drop_column('received_by')
        batch_op.drop_column('received_at')
        batch_op.drop_column('state')

    with op.batch_alter_table('forward_statuses', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_forward_statuses_forward_id'))

    op.drop_table('forward_statuses')
    with op.batch_alter_table('partner_updates', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_partner_updates_report_id'))
        batch_op.drop_index(batch_op.f('ix_partner_updates_next_attempt_at'))
        batch_op.drop_index(batch_op.f('ix_partner_updates_country'))

    op.drop_table('partner_updates')
