"""`flask --app app wallet …`: export a card's pass, show what is configured."""

from __future__ import annotations

from pathlib import Path

import click
from flask.cli import AppGroup
from sqlalchemy import select

from .extensions import db
from .models import Merchant
from .tenancy import tenant
from .wallet import passkit
from .wallet.credentials import wallet_status

wallet_cli = AppGroup("wallet", help="Apple and Google Wallet passes.")


@wallet_cli.command("export-pass")
@click.option("--card", "code", required=True, help="The card's code (as printed on it).")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, writable=True),
              help="Where to write the .pkpass file.")
def export_pass_command(code: str, output: str) -> None:
    """Write a card's signed Apple Wallet pass to a file."""
    cards = passkit.card_by_code_anywhere(code)
    if not cards:
        raise click.UsageError(f"No card with code {code!r}.")
    if len(cards) > 1:
        raise click.UsageError(f"{len(cards)} merchants have a card {code!r}; "
                               "codes are unique per merchant only.")
    card = cards[0]
    with tenant(card.merchant_id):
        try:
            built = passkit.build_card_pass(card.merchant_id, card.id)
        except passkit.WalletNotConfigured as exc:
            raise click.ClickException(
                "Apple Wallet is not configured for this card's merchant; "
                "see `flask --app app wallet status`."
            ) from exc
    Path(output).write_bytes(built.data)
    click.echo(f"Wrote {output} ({len(built.data)} bytes, serial {built.serial}).")


@wallet_cli.command("status")
@click.option("--merchant", "slug", default=None, help="A merchant's slug (default: all).")
def status_command(slug: str | None) -> None:
    """Show each merchant's effective wallet configuration and what is missing."""
    query = select(Merchant).order_by(Merchant.id)
    if slug:
        query = query.where(Merchant.slug == slug)
    merchants = db.session.scalars(query).all()
    if not merchants:
        raise click.UsageError("No such merchant.")
    for merchant in merchants:
        status = wallet_status(merchant.id)
        click.echo(f"{merchant.slug}: Apple Wallet {'ready' if status.apple_ready else 'off'}, "
                   f"Google Wallet {'ready' if status.google_ready else 'off'}")
        for item in status.apple + status.google:
            line = f"  {item.label}: {item.value or 'missing'}"
            if item.source:
                line += f" [{item.source}]"
            if item.subject:
                line += f" — {item.subject}"
            if item.expires_at:
                line += f", expires {item.expires_at:%Y-%m-%d}"
            if item.problem:
                line += f" — PROBLEM: {item.problem}"
            click.echo(line)
