"""Automations: birthday, win-back, reward-ready, welcome and tag-based flows.

`engine` evaluates every switched-on flow (cron, every 15 minutes) and fires
each one once per occurrence; `flows` says who each kind selects on a local
date; `manage` switches flows on and off and saves their settings and content.
"""
