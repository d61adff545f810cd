"""All models, importable from one place (alembic's autogenerate sees them here)."""

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

__all__ = [name for name in dir() if not name.startswith("_")]
