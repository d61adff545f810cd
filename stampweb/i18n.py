"""Languages: which one a page is shown in, and which way it is written."""

from __future__ import annotations

from flask import Flask, g, has_request_context, request
from flask_babel import get_locale
from flask_login import current_user

from .extensions import babel

# The shipped locales, in the order the language pickers show them.
LANGUAGES = {
    "en": "English",
    "ru": "Русский",
    "kk": "Қазақша",
    "he": "עברית",
    "fa": "فارسی",
}
RTL_LANGUAGES = {"he", "fa"}


def normalize_locale(value: str | None, fallback: str = "en") -> str:
    if not value:
        return fallback
    short = value.replace("-", "_").split("_")[0].lower()
    return short if short in LANGUAGES else fallback


def select_locale() -> str:
    """The page's language: what the page chose (a customer's), else the browser's."""
    chosen = getattr(g, "locale", None)
    if chosen:
        return chosen
    merchant = getattr(g, "merchant", None)
    default = merchant.locale if merchant is not None else "en"
    if not has_request_context():  # jobs, CLI and services called from tests
        return default
    return request.accept_languages.best_match(LANGUAGES.keys()) or default


def select_timezone() -> str:
    merchant = getattr(g, "merchant", None)
    if merchant is None and current_user and current_user.is_authenticated:
        merchant = current_user.merchant
    return merchant.timezone if merchant is not None else "UTC"


def text_direction() -> str:
    return "rtl" if str(get_locale()).split("_")[0] in RTL_LANGUAGES else "ltr"


def init_i18n(app: Flask) -> None:
    babel.init_app(
        app,
        locale_selector=select_locale,
        timezone_selector=select_timezone,
        default_translation_directories=str(app.root_path + "/translations"),
    )
    app.jinja_env.globals.update(
        text_direction=text_direction,
        current_locale=lambda: str(get_locale()),
        LANGUAGES=LANGUAGES,
    )
