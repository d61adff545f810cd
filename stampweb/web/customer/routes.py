"""The customer portal: join, card and preferences pages (no login)."""

from __future__ import annotations

from . import bp  # noqa: F401
