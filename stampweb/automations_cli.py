"""`flask --app app automations run [--merchant SLUG] [--dry-run]`: run the engine now."""

from __future__ import annotations

import click
from flask.cli import AppGroup

from .extensions import db
from .models import Merchant
from .tenancy import unscoped

automations_cli = AppGroup("automations", help="Birthday, win-back and other automations.")


@automations_cli.command("run")
@click.option("--merchant", "slug", default=None, help="Only this merchant (its slug).")
@click.option("--dry-run", is_flag=True, help="Print who would get what; send nothing.")
def run_command(slug: str | None, dry_run: bool) -> None:
    """Evaluate the switched-on flows now (catching up missed days) and send what is due."""
    from .automations import engine

    merchant_id = None
    with unscoped():
        if slug is not None:
            merchant = db.session.scalar(db.select(Merchant).filter_by(slug=slug))
            if merchant is None:
                raise click.UsageError(f"No merchant with slug {slug!r}.")
            merchant_id = merchant.id
        slugs = dict(db.session.execute(db.select(Merchant.id, Merchant.slug)).all())
    runs = engine.run(merchant_id, dry_run=dry_run)
    verb = "would fire" if dry_run else "fired"
    for run in runs:
        days = ", ".join(d.isoformat() for d in run.dates) or "nothing due"
        click.echo(f"{slugs.get(run.merchant_id, run.merchant_id)} / {run.kind} "
                   f"({days}): {verb} {len(run.firings)}")
        for firing in run.firings:
            gift = f" + {firing.gift}" if firing.gift else ""
            click.echo(f"  {firing.name or '#' + str(firing.customer_id)} "
                       f"[{firing.occurrence}] by {'+'.join(firing.channels)}{gift}")
    total = sum(len(run.firings) for run in runs)
    if dry_run:
        click.echo(f"Dry run: {total} would fire; nothing was sent or saved.")
    else:
        click.echo(f"Fired {total}; {sum(r.messages for r in runs)} messages queued.")
