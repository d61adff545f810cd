"""Log in and out, change one's password, and (owners) manage the team."""

from __future__ import annotations

import secrets

from flask import current_app, flash, redirect, render_template, request, url_for
from flask_babel import force_locale
from flask_babel import gettext as _
from flask_login import current_user, login_required, login_user, logout_user
from sqlalchemy import bindparam, select

from ...accounts import AccountError, authenticate, change_password, create_user, set_language
from ...extensions import db, limiter, login_manager
from ...models import ROLE_STAFF, User
from ...security import check_password, is_safe_next
from ...tenancy import get_or_404, unscoped
from .. import owner_required
from . import bp
from .forms import LanguageForm, LoginForm, PasswordForm, RoleForm, UserForm

login_manager.login_view = "auth.login"
login_manager.login_message = None


# Run on every request of a logged-in user, so built once: Session.get builds
# and hashes a new SELECT each time (a sixth of the load). The user's merchant
# comes joined (User.merchant is lazy="joined").
_USER_BY_ID = select(User).where(User.id == bindparam("user_id"))


@login_manager.user_loader
def load_user(session_id: str) -> User | None:
    """Find the user of a session; a rotated session token logs the session out."""
    user_id, _sep, token = session_id.partition(":")
    if not user_id.isdigit() or not token:
        return None
    with unscoped():
        user = db.session.execute(_USER_BY_ID, {"user_id": int(user_id)}).scalar()
    if user is None or not user.active or not secrets.compare_digest(user.session_token, token):
        return None
    return user


def home_for(user: User) -> str:
    return url_for("staff.index") if user.role == ROLE_STAFF else url_for("merchant.dashboard")


def _login_limit() -> str:
    return current_app.config["LOGIN_RATE_LIMIT"]


def _account_key() -> str:
    return "login-account:" + request.form.get("email", "").strip().lower()


@bp.route("/login", methods=["GET", "POST"])
@limiter.limit(_login_limit, methods=["POST"])
@limiter.limit(_login_limit, methods=["POST"], key_func=_account_key)
def login():
    if current_user.is_authenticated:
        return redirect(home_for(current_user))
    form = LoginForm()
    if form.validate_on_submit():
        user = authenticate(form.email.data, form.password.data)
        if user is not None:
            login_user(user)
            target = request.args.get("next")
            return redirect(target if is_safe_next(target) else home_for(user))
        form.password.errors.append(_("That email and password do not match."))
    return render_template("auth/login.html", form=form)


@bp.post("/logout")
def logout():
    logout_user()
    flash(_("You are logged out."), "info")
    return redirect(url_for("auth.login"))


@bp.route("/account/password", methods=["GET", "POST"])
@login_required
def password():
    form = PasswordForm()
    if form.validate_on_submit():
        ok, _new = check_password(current_user.password_hash, form.current_password.data)
        if not ok:
            form.current_password.errors.append(_("That is not your current password."))
        else:
            user = current_user._get_current_object()
            try:
                change_password(user, form.new_password.data)
            except AccountError as exc:
                form.new_password.errors.append(exc.message)
            else:
                # Other sessions are now logged out; keep this one.
                login_user(user)
                flash(_("Your password is changed. Other sessions are logged out."), "success")
                return redirect(home_for(user))
    return render_template("auth/password.html", form=form)


@bp.route("/account/language", methods=["GET", "POST"])
@login_required
def language():
    """The language this user sees the admin and staff pages in."""
    form = LanguageForm()
    if request.method == "GET":
        form.locale.data = current_user.locale or ""
    if form.validate_on_submit():
        user = current_user._get_current_object()
        try:
            set_language(user, form.locale.data)
        except AccountError as exc:
            form.locale.errors.append(exc.message)
        else:
            # This request already chose its language; say it in the new one.
            with force_locale(user.locale or user.merchant.locale):
                flash(_("Language saved."), "success")
            target = request.args.get("next")
            return redirect(target if is_safe_next(target) else home_for(user))
    return render_template("auth/language.html", form=form)


@bp.route("/team", methods=["GET", "POST"])
@owner_required
def team():
    form = UserForm()
    if form.validate_on_submit():
        try:
            create_user(
                merchant_id=current_user.merchant_id,
                email=form.email.data,
                password=form.password.data,
                role=form.role.data,
                name=form.name.data or "",
            )
        except AccountError as exc:
            getattr(form, exc.field).errors.append(exc.message)
        else:
            db.session.commit()
            flash(_("%(email)s can now log in.", email=form.email.data), "success")
            return redirect(url_for("auth.team"))
    users = db.session.scalars(select(User).order_by(User.email)).all()
    return render_template("auth/team.html", form=form, users=users, role_form=RoleForm())


@bp.post("/team/<int:user_id>/role")
@owner_required
def change_role(user_id: int):
    user = get_or_404(User, user_id)
    form = RoleForm()
    if form.validate_on_submit() and user.id != current_user.id:
        user.role = form.role.data
        db.session.commit()
        flash(_("%(email)s is now %(role)s.", email=user.email, role=user.role), "success")
    elif user.id == current_user.id:
        flash(_("You cannot change your own role."), "error")
    return redirect(url_for("auth.team"))


@bp.post("/team/<int:user_id>/active")
@owner_required
def toggle_active(user_id: int):
    user = get_or_404(User, user_id)
    if user.id == current_user.id:
        flash(_("You cannot deactivate yourself."), "error")
    else:
        user.active = not user.active
        if not user.active:
            user.session_token = secrets.token_hex(16)
        db.session.commit()
    return redirect(url_for("auth.team"))




@bp.get("/")
def index():
    if current_user.is_authenticated:
        return redirect(home_for(current_user))
    return redirect(url_for("auth.login"))
