from flask import Blueprint

bp = Blueprint("merchant", __name__, url_prefix="/admin")

from . import (  # noqa: E402,F401
    api_settings,
    audit,
    automations,
    campaigns,
    customers,
    messages,
    program,
    routes,  # noqa: E402,F401
    segments,
    wallet,
)
