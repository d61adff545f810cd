"""`flask --app app tags update [--merchant SLUG]`: recompute rule tags now."""

from __future__ import annotations

import click
from flask.cli import AppGroup

from ..extensions import db
from ..models import Merchant
from . import tags as tag_service

tags_cli = AppGroup("tags", help="Customer tags.")


@tags_cli.command("update")
@click.option("--merchant", "slug", default=None, help="Only this merchant (its slug).")
def update_command(slug: str | None) -> None:
    """Recompute rule tags and print what each one added and removed."""
    merchant_id = None
    slugs = {}
    if slug is not None:
        merchant = db.session.scalar(db.select(Merchant).filter_by(slug=slug))
        if merchant is None:
            raise click.UsageError(f"No merchant with slug {slug!r}.")
        merchant_id = merchant.id
    updates = tag_service.update_tags(merchant_id)
    if updates:
        slugs = dict(db.session.execute(
            db.select(Merchant.id, Merchant.slug).where(
                Merchant.id.in_({u.merchant_id for u in updates}))
        ).all())
    for update in updates:
        click.echo(f"{slugs[update.merchant_id]} / {update.name}: "
                   f"added {update.added}, removed {update.removed}")
    click.echo(f"Total: {len(updates)} tags, added {sum(u.added for u in updates)}, "
               f"removed {sum(u.removed for u in updates)}")
