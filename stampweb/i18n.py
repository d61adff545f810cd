"""Languages: which one a page is shown in, and which way it is written."""

from __future__ import annotations

import functools

import flask_babel
from babel import numbers, support
from flask import Flask, g, has_request_context, request
from flask.globals import _cv_app
from flask_babel import get_locale, get_translations
from flask_login import current_user
from werkzeug.utils import cached_property
from wtforms.i18n import messages_path

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


# Blueprints whose pages speak to customers: they follow the customer's choice
# or browser, never the language of a merchant user who happens to be logged in.
CUSTOMER_BLUEPRINTS = {"customer"}


def select_locale() -> str:
    """The page's language.

    A page that chose one (a customer's) keeps it; a logged-in merchant user
    sees the admin in their own language, else the merchant's default; anyone
    else gets the browser's language, else the merchant's default.
    """
    chosen = getattr(g, "locale", None)
    if chosen:
        return chosen
    merchant = getattr(g, "merchant", None)
    default = merchant.locale if merchant is not None else "en"
    if not has_request_context():  # jobs, CLI and services called from tests
        return default
    if request.blueprint not in CUSTOMER_BLUEPRINTS and current_user.is_authenticated:
        return normalize_locale(current_user.locale or current_user.merchant.locale)
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
    _cache_wtforms_translations(app)
    _speed_up_template_translations(app)
    app.jinja_env.globals.update(
        text_direction=text_direction,
        current_locale=lambda: str(get_locale()),
        LANGUAGES=LANGUAGES,
    )


_TRANSLATIONS_KEY = "_stampweb_translations"


def _known_locale() -> tuple:
    """(the locale Flask-Babel has settled for this context or None, the context's g dict).

    get_locale() reads the same attribute through three context-local
    proxies, which costs fifteen times as much; a page asks for every
    string it translates and every number it formats. If a Flask-Babel
    release kept the locale elsewhere, this finds None and callers take
    get_locale(), the full path.
    """
    app_context = _cv_app.get(None)
    if app_context is None:
        return None, {}
    state = app_context.g.__dict__
    return getattr(state.get("_flask_babel"), "babel_locale", None), state


def request_translations() -> support.NullTranslations:
    """Flask-Babel's get_translations(), looked up once per request and locale.

    Flask-Babel finds the catalogue anew for every string, through several
    context-local look-ups (domain, locale, its cache key); a page translates
    dozens of strings, and on the staff card, which answers every stamp, that
    cost more than the rest of its rendering. The catalogue is remembered in
    `g` with the locale it is for, so force_locale() and refresh() (a
    language switch mid-request) still get the right one.
    """
    locale, state = _known_locale()
    if locale is not None:  # the fast path, for every string after the first
        remembered = state.get(_TRANSLATIONS_KEY)
        if remembered is not None and remembered[0] is locale:
            return remembered[1]
    locale = get_locale()
    if locale is None:  # no app context: Flask-Babel's null translations
        return get_translations()
    remembered = g.get(_TRANSLATIONS_KEY)
    if remembered is not None and remembered[0] is locale:
        return remembered[1]
    translations = get_translations()
    setattr(g, _TRANSLATIONS_KEY, (locale, translations))
    return translations


@functools.lru_cache(maxsize=1024)
def _format_whole_number(number: int, locale) -> str:
    return numbers.format_decimal(number, locale=locale)


def format_number(number) -> str:
    """Flask-Babel's `numberformat` filter, remembered for whole numbers.

    Babel works the locale's pattern out again for every number; the staff
    card formats its stamp counts on every stamp, and the same small numbers
    come back all day.
    """
    if type(number) is int:
        return _format_whole_number(number, _known_locale()[0] or get_locale())
    return flask_babel.format_number(number)


def _speed_up_template_translations(app: Flask) -> None:
    """Templates translate through request_translations() and format_number() above.

    The same callables Flask-Babel installs (babel.init_app), with the
    catalogue looked up once per request.
    """
    app.jinja_env.install_gettext_callables(
        gettext=lambda s: request_translations().ugettext(s),
        ngettext=lambda s, p, n: request_translations().ungettext(s, p, n),
        newstyle=True,
        pgettext=lambda c, s: request_translations().upgettext(c, s),
        npgettext=lambda c, s, p, n: request_translations().unpgettext(c, s, p, n),
    )
    app.jinja_env.filters["numberformat"] = format_number


@functools.lru_cache(maxsize=2 * len(LANGUAGES))
def _wtforms_catalog(locale: str) -> support.Translations:
    return support.Translations.load(messages_path(), [locale], domain="wtforms")


def _cache_wtforms_translations(app: Flask) -> None:
    """Read WTForms' own messages (e.g. "Not a valid integer value") once per process.

    Flask-WTF parses the catalogue file anew for every request that builds a
    form, unless the request already has `wtforms_translations` (its
    per-request cache). Our request class answers that attribute from a
    per-process cache instead, which takes a file read and parse off every
    form POST.
    """

    class Request(app.request_class):
        @cached_property
        def wtforms_translations(self) -> support.Translations:
            return _wtforms_catalog(str(get_locale()))

    app.request_class = Request
