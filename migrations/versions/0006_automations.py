"""automations: flows and their firings

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23 10:15:00.000000

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('automation_flow',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=20), nullable=False),
    sa.Column('enabled', sa.Boolean(), nullable=False),
    sa.Column('settings', sa.JSON(), nullable=False),
    sa.Column('campaign_id', sa.Integer(), nullable=False),
    sa.Column('local_hour', sa.Integer(), nullable=False),
    sa.Column('last_evaluated_local_date', sa.Date(), nullable=True),
    sa.Column('enabled_at', sa.DateTime(), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.Column('merchant_id', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['campaign_id'], ['campaign.id'], name=op.f('fk_automation_flow_campaign_id_campaign'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['merchant_id'], ['merchant.id'], name=op.f('fk_automation_flow_merchant_id_merchant'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_automation_flow')),
    sa.UniqueConstraint('merchant_id', 'kind', name=op.f('uq_automation_flow_merchant_id_kind'))
    )
    with op.batch_alter_table('automation_flow', schema=None) as batch_op:
        batch_op.create_index('ix_automation_flow_enabled', ['enabled', 'merchant_id'], unique=False)

    op.create_table('automation_firing',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('flow_id', sa.Integer(), nullable=False),
    sa.Column('customer_id', sa.Integer(), nullable=False),
    sa.Column('occurrence', sa.String(length=40), nullable=False),
    sa.Column('local_date', sa.Date(), nullable=False),
    sa.Column('voucher_id', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('merchant_id', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['customer_id'], ['customer.id'], name=op.f('fk_automation_firing_customer_id_customer'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['flow_id'], ['automation_flow.id'], name=op.f('fk_automation_firing_flow_id_automation_flow'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['merchant_id'], ['merchant.id'], name=op.f('fk_automation_firing_merchant_id_merchant'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['voucher_id'], ['voucher.id'], name=op.f('fk_automation_firing_voucher_id_voucher'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_automation_firing')),
    sa.UniqueConstraint('flow_id', 'customer_id', 'occurrence', name=op.f('uq_automation_firing_flow_id_customer_id_occurrence'))
    )
    with op.batch_alter_table('automation_firing', schema=None) as batch_op:
        batch_op.create_index('ix_automation_firing_merchant_created', ['merchant_id', 'created_at'], unique=False)


def downgrade():
    with op.batch_alter_table('automation_firing', schema=None) as batch_op:
        batch_op.drop_index('ix_automation_firing_merchant_created')
    op.drop_table('automation_firing')
    with op.batch_alter_table('automation_flow', schema=None) as batch_op:
        batch_op.drop_index('ix_automation_flow_enabled')
    op.drop_table('automation_flow')
