"""Campaign content: Markdown compiled and sanitised once, personalised per recipient.

Placeholders: {first_name}, {stamps}, {stamps_left}, {reward}, {voucher_code},
{card_url}, each with an optional fallback after a bar: {first_name|friend}.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import markdown as markdown_lib
import nh3
from markupsafe import Markup, escape

PLACEHOLDERS = ("first_name", "stamps", "stamps_left", "reward", "voucher_code", "card_url")
PLACEHOLDER_RE = re.compile(r"\{(" + "|".join(PLACEHOLDERS) + r")(?:\|([^{}]*))?\}")
UNKNOWN_PLACEHOLDER_RE = re.compile(r"\{([a-z_]+)(?:\|[^{}]*)?\}")

# What merchant-authored Markdown may produce. No scripts, styles, iframes or
# event handlers: nh3 (ammonia) strips everything else.
ALLOWED_TAGS = {
    "p", "br", "strong", "em", "b", "i", "u", "a", "ul", "ol", "li", "h1", "h2", "h3",
    "blockquote", "hr", "code", "pre",
}
ALLOWED_ATTRIBUTES = {"a": {"href", "title"}}

WALLET_TEXT_LIMIT = 150


@dataclass(frozen=True)
class CompiledContent:
    """One language's version of a campaign, ready to personalise."""

    locale: str
    subject: str
    preheader: str
    html_body: Markup
    text_body: str
    wallet_text: str


def unknown_placeholders(text: str) -> list[str]:
    """Placeholders we would not replace ({frist_name}), for the form to point out."""
    return sorted(
        {m.group(1) for m in UNKNOWN_PLACEHOLDER_RE.finditer(text or "")} - set(PLACEHOLDERS)
    )


def markdown_to_safe_html(text: str) -> Markup:
    html = markdown_lib.markdown(text or "", extensions=["sane_lists"])
    cleaned = nh3.clean(
        html,
        tags=ALLOWED_TAGS,
        attributes=ALLOWED_ATTRIBUTES,
        url_schemes={"http", "https", "mailto"},
        link_rel="noopener noreferrer",
    )
    return Markup(cleaned)


def compile_content(campaign, locale: str) -> CompiledContent:
    """The campaign in `locale` (its variant, else the default text), compiled once."""
    variant = (campaign.variants or {}).get(locale) or {}

    def pick(name: str) -> str:
        return variant.get(name) or getattr(campaign, name) or ""

    body = pick("body_markdown")
    return CompiledContent(
        locale=locale,
        subject=pick("subject"),
        preheader=pick("preheader"),
        html_body=markdown_to_safe_html(body),
        text_body=body,
        wallet_text=pick("wallet_text"),
    )


def personalise(template: str, values: dict, *, html: bool = False) -> str:
    """Fill placeholders; an empty value uses the fallback, else nothing."""

    def replace(match: re.Match) -> str:
        value = values.get(match.group(1))
        if value is None or value == "":
            value = match.group(2) or ""
        return str(escape(value)) if html else str(value)

    return PLACEHOLDER_RE.sub(replace, template or "")


def single_line(text: str) -> str:
    """Subjects and wallet texts are one line: line breaks would break headers."""
    return " ".join((text or "").split())


def recipient_values(customer, card, program, *, voucher_code: str | None, card_url: str) -> dict:
    stamps = card.stamps if card is not None else 0
    required = program.stamps_required if program is not None else 0
    return {
        "first_name": customer.first_name if customer is not None else "",
        "stamps": str(stamps),
        "stamps_left": str(max(required - stamps, 0)),
        "reward": program.reward_text if program is not None else "",
        "voucher_code": voucher_code or "",
        "card_url": card_url,
    }
