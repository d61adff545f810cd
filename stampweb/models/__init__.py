"""All models, importable from one place (alembic's autogenerate sees them here)."""

from sqlalchemy import exists
from sqlalchemy.orm import column_property

from .api import ApiKey, IdempotencyRecord, WebhookDelivery, WebhookEndpoint
from .automations import AutomationFiring, AutomationFlow
from .base import utcnow
from .campaigns import Campaign, Message, MessageEvent
from .loyalty import (
    CHANNELS,
    CONSENT_GRANTED,
    CONSENT_NONE,
    CONSENT_PENDING,
    CONSENT_SOURCES,
    CONSENT_STATES,
    CONSENT_WITHDRAWN,
    REWARD_STATE_BIRTHDAY,
    REWARD_STATE_NONE,
    VISIT_REVERSAL,
    VISIT_STAMP,
    VOUCHER_ACTIVE,
    VOUCHER_EXPIRED,
    VOUCHER_KINDS,
    VOUCHER_REDEEMED,
    VOUCHER_VOID,
    Card,
    ConsentEvent,
    Customer,
    MailboxMessage,
    Program,
    Visit,
    Voucher,
    new_code,
)
from .segments import CustomerTag, Segment, Tag
from .tenancy import (
    ROLE_MANAGER,
    ROLE_OWNER,
    ROLE_RANK,
    ROLE_STAFF,
    ROLES,
    AuditLog,
    Location,
    Merchant,
    User,
)
from .wallet import WalletGoogleNotification, WalletPass, WalletRegistration, WalletSettings

# Loaded with every merchant, and so with every logged-in user (whose merchant
# is joined): whether a stamp's events have a wallet or a webhook to look
# further for. See stampweb/merchant_facts.py.
Merchant.has_wallet_settings = column_property(
    exists().where(WalletSettings.merchant_id == Merchant.id)
)
Merchant.has_active_webhooks = column_property(
    exists().where(WebhookEndpoint.merchant_id == Merchant.id, WebhookEndpoint.active.is_(True))
)

__all__ = [name for name in dir() if not name.startswith("_")]
