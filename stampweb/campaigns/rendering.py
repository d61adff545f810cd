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


def compile_content(campaign, locale: str, default_locale: str | None = None) -> CompiledContent:
    """The campaign for a customer who reads `locale`, compiled once per language.

    Each channel takes the customer's language when the campaign has a variant
    with that channel's text (an email needs its subject and body, a wallet
    message its text), else the campaign's own text in the merchant's default
    language. An email is never half one language and half another: `locale`
    of the result is the language its text (and so its frame) is in.
    """
    default_locale = default_locale or locale
    variant = {} if locale == default_locale else (campaign.variants or {}).get(locale) or {}
    email_variant = variant if variant.get("subject") and variant.get("body_markdown") else None
    email = email_variant or {name: getattr(campaign, name) for name in
                              ("subject", "preheader", "body_markdown")}
    wallet_text = variant.get("wallet_text") or campaign.wallet_text
    body = email.get("body_markdown") or ""
    return CompiledContent(
        locale=locale if email_variant else default_locale,
        subject=email.get("subject") or "",
        preheader=email.get("preheader") or "",
        html_body=markdown_to_safe_html(body),
        text_body=body,
        wallet_text=wallet_text or "",
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


# --- email templates rendered once per batch ------------------------------------------

# Marks a per-recipient value in a rendered template; never in real text.
_SLOT = "\x00"


class TemplateShells:
    """An email template rendered once, its per-recipient values filled in per message.

    Rendering the campaign templates (Jinja, under the customer's locale) for
    every recipient cost as much as the SMTP transaction itself. The parts
    that differ per recipient are few and passed in by name (`slots`: the
    personalised body, the links), so the template is rendered with markers
    in their place and split there; each message then only joins strings.

    What else the template reads of the customer (the locale of <html lang>,
    the profile gaps a reminder lists) is recorded while rendering, and the
    rendering is reused only for customers with the same values of exactly
    those attributes, so any template stays correct: one reading the first
    name would simply be rendered per recipient.
    """

    def __init__(self, render, slots: tuple[str, ...]):
        # render(customer, **slot_values) -> str
        self._render = render
        self._slots = slots
        # (attribute names read) -> {their values: the split rendering}
        self._shells: dict[tuple[str, ...], dict[tuple, list[str]]] = {}

    def fill(self, customer, values: dict[str, str]) -> str:
        """The template for `customer` with `values` in the slots (already escaped for HTML)."""
        parts = self._shell(customer)
        out = [parts[0]]
        for index in range(1, len(parts), 2):
            out.append(values[parts[index]])
            out.append(parts[index + 1])
        return "".join(out)

    def _shell(self, customer) -> list[str]:
        for names, shells in self._shells.items():
            parts = shells.get(tuple(getattr(customer, name) for name in names))
            if parts is not None:
                return parts
        reading = _ReadRecorder(customer)
        text = self._render(reading, **{
            name: Markup(f"{_SLOT}{name}{_SLOT}") for name in self._slots})
        names = tuple(sorted(reading.read))
        parts = text.split(_SLOT)
        if len(parts) % 2 == 0 or not set(parts[1::2]) <= set(self._slots):
            raise ValueError("a NUL character in an email template or its values")
        self._shells.setdefault(names, {})[tuple(reading.read[n] for n in names)] = parts
        return parts


class _ReadRecorder:
    """Stands for a customer in a template and notes each attribute it reads."""

    def __init__(self, target):
        self._target = target
        self.read: dict[str, object] = {}

    def __getattr__(self, name: str):
        value = getattr(self._target, name)
        self.read[name] = value
        return value
