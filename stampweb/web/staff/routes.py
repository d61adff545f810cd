"""The staff page: phone-first stamping."""

from __future__ import annotations

from flask import render_template

from .. import staff_required
from . import bp


@bp.get("/staff")
@staff_required
def index():
    return render_template("staff/index.html")
