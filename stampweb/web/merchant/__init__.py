from flask import Blueprint

bp = Blueprint("merchant", __name__, url_prefix="/admin")

from . import routes  # noqa: E402,F401
