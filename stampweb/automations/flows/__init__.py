"""The kinds of automation, by kind (also their campaign's Campaign.kind)."""

from __future__ import annotations

from .base import Candidate, Day, Flow, Grant, Setting
from .birthday import Birthday
from .reward_ready import RewardReady, VoucherExpiry
from .tag_notify import TagNotify
from .welcome import Welcome
from .winback import Winback, WinbackSecondStep

FLOWS: dict[str, Flow] = {
    flow.kind: flow
    for flow in (Birthday(), Winback(), WinbackSecondStep(), RewardReady(), VoucherExpiry(),
                 Welcome(), TagNotify())
}

__all__ = ["FLOWS", "Candidate", "Day", "Flow", "Grant", "Setting"]
