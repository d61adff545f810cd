"""`flask --app app api-key …`: make, list and revoke a merchant's API keys."""

from __future__ import annotations

import click
from flask.cli import AppGroup

from .api import auth
from .extensions import db
from .models import Merchant
from .models.api import API_SCOPES, SCOPE_WRITE
from .tenancy import unscoped

api_key_cli = AppGroup("api-key", help="API keys for POS systems and scripts.")


def _merchant_id(slug: str) -> int:
    with unscoped():
        merchant_id = db.session.scalar(db.select(Merchant.id).where(Merchant.slug == slug))
    if merchant_id is None:
        raise click.UsageError(f"No merchant with slug {slug!r}.")
    return merchant_id


@api_key_cli.command("create")
@click.option("--merchant", "slug", required=True, help="The merchant's slug.")
@click.option("--name", required=True, help="What the key is for, e.g. the till.")
@click.option("--scope", type=click.Choice(API_SCOPES), default=SCOPE_WRITE, show_default=True)
def create_command(slug: str, name: str, scope: str) -> None:
    """Make a key; it is printed once, as the last line."""
    try:
        new = auth.create_key(_merchant_id(slug), name, scope)
    except auth.ApiKeyError as exc:
        raise click.UsageError(f"{exc.field}: {exc.message}") from exc
    click.echo(f"API key {new.prefix}… ({scope}) for {slug}. Store it now; it is not shown again:")
    click.echo(new.key)


@api_key_cli.command("list")
@click.option("--merchant", "slug", required=True)
def list_command(slug: str) -> None:
    """The merchant's keys (prefix, scope, name, state)."""
    for key in auth.list_keys(_merchant_id(slug)):
        state = "revoked" if key.revoked_at else "active"
        click.echo(f"{key.id}\t{key.prefix}…\t{key.scope}\t{state}\t{key.name}")


@api_key_cli.command("revoke")
@click.option("--merchant", "slug", required=True)
@click.option("--id", "key_id", type=int, required=True)
def revoke_command(slug: str, key_id: int) -> None:
    """Revoke a key at once."""
    if not auth.revoke_key(_merchant_id(slug), key_id):
        raise click.UsageError("No such active key for this merchant.")
    click.echo(f"Key {key_id} revoked.")
