"""Forms of the segment builder and the tag pages.

The builder is a plain HTML form whose conditions are indexed inputs
(`groups-0-match`, `groups-0-conditions-1-field`, `...-op`, `...-value`,
`...-days`), so it posts without JavaScript. Its buttons carry an `action`
("add_condition-0", "remove_condition-0-1", "add_group", "remove_group-0",
"refresh", "save"); every action but "save" only re-renders the builder with
the change, so nothing is saved half-way. htmx posts the same form and swaps
just the builder.

A draft keeps what was typed (strings); the segment service validates it.
"""

from __future__ import annotations

import re

from flask_babel import lazy_gettext as _l
from flask_wtf import FlaskForm
from werkzeug.datastructures import MultiDict
from wtforms import HiddenField, StringField, TextAreaField
from wtforms.validators import Length, Optional

from ...campaigns.segments import FIELDS, MATCHES, MAX_CONDITIONS, MAX_GROUPS

_CONDITION_KEY = re.compile(r"^groups-(\d{1,3})-conditions-(\d{1,3})-field$")
_GROUP_KEY = re.compile(r"^groups-(\d{1,3})-match$")
_ACTION = re.compile(r"^(add_group|refresh|save|add_condition-\d+|remove_group-\d+"
                     r"|remove_condition-\d+-\d+)$")

DEFAULT_FIELD = "days_since_last_visit"


class SegmentForm(FlaskForm):
    """The segment's name (and the CSRF token); the builder's inputs are parsed below."""

    name = StringField(_l("Name"), validators=[Optional(), Length(max=200)])


class RuleTagForm(FlaskForm):
    name = StringField(_l("Tag name"), validators=[Optional(), Length(max=200)])
    description = TextAreaField(_l("Description (optional)"),
                                validators=[Optional(), Length(max=300)])


class ManualTagForm(FlaskForm):
    name = StringField(_l("Tag name"), validators=[Optional(), Length(max=200)])
    description = StringField(_l("Description (optional)"),
                              validators=[Optional(), Length(max=300)])


class CustomerTagForm(FlaskForm):
    name = StringField(_l("Add a tag"), validators=[Optional(), Length(max=200)])
    next = HiddenField()


class ConfirmForm(FlaskForm):
    """Delete, remove and recompute buttons: the CSRF token is all they carry."""

    next = HiddenField()


def new_condition(field: str = DEFAULT_FIELD) -> dict:
    spec = FIELDS[field]
    return {"field": field, "op": spec.ops[0][0], "value": "", "days": ""}


def new_group() -> dict:
    return {"match": "all", "conditions": [new_condition()]}


def new_draft() -> dict:
    return {"match": "all", "groups": [new_group()]}


def draft_from_form(formdata: MultiDict) -> dict:
    """What the builder's inputs say, as typed; indexes are renumbered from 0."""
    groups: dict[int, dict] = {}
    for key in formdata:
        if match := _GROUP_KEY.match(key):
            groups.setdefault(int(match.group(1)), {})
    conditions: dict[int, dict[int, str]] = {}
    for key in formdata:
        if match := _CONDITION_KEY.match(key):
            g, c = int(match.group(1)), int(match.group(2))
            groups.setdefault(g, {})
            conditions.setdefault(g, {})[c] = key[: -len("field")]
    draft_groups = []
    for g in sorted(groups)[:MAX_GROUPS]:
        match = formdata.get(f"groups-{g}-match", "all")
        group = {"match": match if match in MATCHES else "all", "conditions": []}
        for c in sorted(conditions.get(g, {}))[:MAX_CONDITIONS]:
            prefix = conditions[g][c]
            group["conditions"].append(_condition_from_form(formdata, prefix))
        draft_groups.append(group)
    match = formdata.get("match", "all")
    return {"match": match if match in MATCHES else "all", "groups": draft_groups}


def _condition_from_form(formdata: MultiDict, prefix: str) -> dict:
    field = formdata.get(prefix + "field", "")
    spec = FIELDS.get(field)
    if spec is None:
        return {"field": field, "op": "", "value": "", "days": ""}
    op = formdata.get(prefix + "op", "")
    if op not in {key for key, _label in spec.ops}:
        # The field was just changed: its old comparison may not apply.
        op = spec.ops[0][0]
    if spec.kind == "languages":
        value = [v for v in formdata.getlist(prefix + "value") if v]
    else:
        value = formdata.get(prefix + "value", "").strip()
    return {"field": field, "op": op, "value": value,
            "days": formdata.get(prefix + "days", "").strip()}


def rules_from_draft(draft: dict) -> dict:
    """The draft in the segment rule schema (still unvalidated strings)."""
    groups = []
    for group in draft["groups"]:
        conditions = []
        for condition in group["conditions"]:
            rule = {"field": condition["field"], "op": condition["op"],
                    "value": condition["value"]}
            spec = FIELDS.get(condition["field"])
            if spec is not None and spec.extra and condition.get("days"):
                rule[spec.extra] = condition["days"]
            conditions.append(rule)
        groups.append({"match": group["match"], "conditions": conditions})
    return {"version": 1, "match": draft["match"], "groups": groups}


def draft_from_rules(rules: dict | None) -> dict:
    """A saved rule tree as a draft for the builder (values as the inputs show them)."""
    if not rules:
        return new_draft()
    groups = []
    for group in rules.get("groups", []):
        conditions = []
        for condition in group.get("conditions", []):
            spec = FIELDS.get(condition.get("field"))
            value = condition.get("value")
            if isinstance(value, bool):
                value = "true" if value else "false"
            elif spec is not None and spec.kind == "languages":
                value = list(value or [])
            else:
                value = "" if value is None else str(value)
            days = condition.get(spec.extra) if spec is not None and spec.extra else None
            conditions.append({"field": condition.get("field"), "op": condition.get("op"),
                               "value": value, "days": "" if days is None else str(days)})
        groups.append({"match": group.get("match", "all"), "conditions": conditions})
    return {"match": rules.get("match", "all"), "groups": groups}


def parse_action(formdata: MultiDict) -> str:
    action = formdata.get("action", "save")
    return action if _ACTION.match(action) else "save"


def apply_action(draft: dict, action: str) -> dict:
    """The draft after an add/remove button; removing a group's last condition removes it."""
    groups = draft["groups"]
    parts = action.split("-")
    if parts[0] == "add_group" and len(groups) < MAX_GROUPS:
        groups.append(new_group())
    elif parts[0] == "remove_group" and int(parts[1]) < len(groups):
        del groups[int(parts[1])]
    elif parts[0] == "add_condition" and int(parts[1]) < len(groups):
        conditions = groups[int(parts[1])]["conditions"]
        if len(conditions) < MAX_CONDITIONS:
            conditions.append(new_condition())
    elif parts[0] == "remove_condition" and int(parts[1]) < len(groups):
        conditions = groups[int(parts[1])]["conditions"]
        if int(parts[2]) < len(conditions):
            del conditions[int(parts[2])]
        if not conditions:
            del groups[int(parts[1])]
    return draft


def form_errors(errors: list[tuple[str, str]]) -> dict[str, str]:
    """Service error paths ("groups.0.conditions.1.value") as builder input names."""
    result: dict[str, str] = {}
    for path, message in errors:
        result.setdefault(path.replace(".", "-"), message)
    return result
