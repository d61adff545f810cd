"""A campaign's (or automation's) message in other languages.

The campaign's own subject, preheader, body and wallet text are written in the
merchant's default language. A variant per other shipped language is
optional; `Campaign.variants` keeps the filled ones as
{"ru": {"subject": …, "preheader": …, "body_markdown": …, "wallet_text": …}}.

Editing lives here; rendering.compile_content picks the variant at send time.
"""

from __future__ import annotations

from flask_babel import gettext as _

from ..i18n import LANGUAGES
from . import rendering

FIELDS = ("subject", "preheader", "body_markdown", "wallet_text")
ONE_LINE = ("subject", "preheader", "wallet_text")
LIMITS = {"subject": 200, "preheader": 200, "body_markdown": 20_000,
          "wallet_text": rendering.WALLET_TEXT_LIMIT}


def other_locales(default_locale: str | None) -> list[str]:
    """The shipped languages a variant can be written in: all but the default."""
    return [code for code in LANGUAGES if code != (default_locale or "en")]


def field_key(locale: str, name: str) -> str:
    """The error key (and form field id) of one variant field: `variant_ru-subject`."""
    return f"variant_{locale}-{name}"


def parse_key(key: str) -> tuple[str, str]:
    """(locale, field name) of a `field_key`."""
    locale, _sep, name = key.removeprefix("variant_").partition("-")
    return locale, name


def clean(raw: dict | None, channels: str, default_locale: str | None
          ) -> tuple[dict[str, dict[str, str]], dict[str, str]]:
    """Variants as they will be stored, and the problems by `field_key`.

    Empty variants are dropped, and so are variants in the default language
    or in a language we do not ship. A variant that starts an email must
    finish it: a subject needs a body and a body a subject.
    """
    variants: dict[str, dict[str, str]] = {}
    errors: dict[str, str] = {}
    email = channels in ("email", "both")
    for locale in other_locales(default_locale):
        given = (raw or {}).get(locale) or {}
        texts = {name: str(given.get(name) or "").strip() for name in FIELDS}
        if not any(texts.values()):
            continue
        for name, text in texts.items():
            key = field_key(locale, name)
            if name in ONE_LINE and ("\n" in text or "\r" in text):
                errors[key] = _("Keep this to one line.")
            elif len(text) > LIMITS[name]:
                errors[key] = _("At most %(num)d characters.", num=LIMITS[name])
            elif unknown := rendering.unknown_placeholders(text):
                errors[key] = _("Unknown placeholder %(names)s. You can use: %(known)s.",
                                names=", ".join(f"{{{n}}}" for n in unknown),
                                known=", ".join(f"{{{n}}}" for n in rendering.PLACEHOLDERS))
        if email and bool(texts["subject"]) != bool(texts["body_markdown"]):
            missing = "body_markdown" if texts["subject"] else "subject"
            errors.setdefault(field_key(locale, missing), _(
                "This language's email needs both a subject and a message, "
                "or neither (then it gets the default text)."))
        variants[locale] = {name: text for name, text in texts.items() if text}
    return variants, errors
