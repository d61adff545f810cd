"""Google Wallet loyalty class and object bodies, from a merchant's and a card's rows."""

from __future__ import annotations

from flask import current_app
from flask_babel import force_locale
from flask_babel import gettext as _

from ..models import Card, Merchant, Program, WalletPass, utcnow
from . import google
from .credentials import GoogleConfig
from .passkit import card_page_url, reward_state_text, staff_scan_url, usable_vouchers


def logo_url(merchant: Merchant) -> str:
    return f"{current_app.config['BASE_URL']}/wallet/logo/{merchant.id}.png"


def loyalty_class(config: GoogleConfig, merchant: Merchant, program: Program) -> dict:
    with force_locale(merchant.locale or "en"):
        return {
            "id": google.class_id(config, merchant.id),
            "issuerName": merchant.name,
            "programName": program.name or merchant.name,
            "programLogo": {
                "sourceUri": {"uri": logo_url(merchant)},
                "contentDescription": {"defaultValue": {
                    "language": merchant.locale or "en", "value": merchant.name}},
            },
            "hexBackgroundColor": merchant.brand_color,
            "reviewStatus": "UNDER_REVIEW",
            "multipleDevicesAndHoldersAllowedStatus": "ONE_USER_ALL_DEVICES",
        }


def loyalty_object(config: GoogleConfig, card: Card, merchant: Merchant,
                   row: WalletPass | None = None) -> dict:
    """The card's loyalty object: balance in stamps, reward state, the staff QR."""
    now = utcnow()
    program = card.program
    with force_locale(card.customer.locale or merchant.locale or "en"):
        state = reward_state_text(card, usable_vouchers(card, now), now)
        body = {
            "id": google.object_id(config, card.wallet_serial),
            "classId": google.class_id(config, merchant.id),
            "state": "ACTIVE",
            "accountId": card.code,
            "accountName": card.customer.display_name,
            "loyaltyPoints": {
                "label": _("Stamps"),
                "balance": {"int": card.stamps},
            },
            "secondaryLoyaltyPoints": {
                "label": _("Reward"),
                "balance": {"string": state or _("%(count)d more to go", count=max(
                    program.stamps_required - card.stamps, 0))},
            },
            "barcode": {"type": "QR_CODE", "value": staff_scan_url(card),
                        "alternateText": card.code},
            "textModulesData": [
                {"id": "next_reward", "header": _("Next reward"), "body": program.reward_text},
            ],
            "linksModuleData": {"uris": [
                {"id": "card_page", "uri": card_page_url(card),
                 "description": _("Your card online")},
            ]},
        }
    return body
