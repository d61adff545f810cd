#!/usr/bin/env python3
"""Fail when a shipped catalogue has untranslated or fuzzy strings.

Usage: scripts/check-translations.py [--translations DIR] [LOCALE ...]

A plural form that the language uses for counts other than one must show the
number (%(num)d) whenever the English plural does.

Checks every shipped locale but English (whose msgids are the text) by
default. Each catalogue is also compared with messages.pot, so a string added
to the code but never merged into a catalogue (`pybabel update`) counts as
untranslated too. Exits 1 and lists every problem; 0 when all are complete.
"""

from __future__ import annotations

import argparse
import gettext
import re
import sys
from pathlib import Path

from babel.messages.pofile import read_po

ROOT = Path(__file__).resolve().parent.parent
# The shipped locales; stampweb/i18n.py LANGUAGES is the source, English is the msgids.
SHIPPED = ("ru", "kk", "he", "fa")


def _is_translated(message) -> bool:
    # A plural entry is a tuple of forms; every form must be filled.
    forms = message.string if isinstance(message.string, (list, tuple)) else (message.string,)
    return bool(forms) and all(forms)


def _label(message) -> str:
    msgid = message.id[0] if isinstance(message.id, (list, tuple)) else message.id
    context = f" [context {message.context}]" if message.context else ""
    return f"{msgid!r}{context}"


NUMBER = re.compile(r"%\(num\)[sd]")


def _forms_used_beyond_one(catalog) -> set[int]:
    """The plural forms the language's rule picks for some count other than 1.

    Such a form stands for several counts (Russian's "one" form also serves 21,
    31…; Persian has a single form for all), so it must show the number.
    """
    rule = gettext.c2py(catalog.plural_expr)
    return {rule(n) for n in range(0, 1000) if n != 1}


def _numberless_forms(message, forms_beyond_one: set[int]) -> bool:
    plural = message.id[1] if isinstance(message.id, (list, tuple)) else ""
    if not NUMBER.search(plural) or not isinstance(message.string, (list, tuple)):
        return False
    return any(
        form and not NUMBER.search(form)
        for index, form in enumerate(message.string)
        if index in forms_beyond_one
    )


def problems(translations: Path, locale: str, template_ids: set) -> list[str]:
    """Every untranslated, fuzzy, obsolete-but-needed or missing entry of one locale."""
    path = translations / locale / "LC_MESSAGES" / "messages.po"
    if not path.exists():
        return [f"{locale}: {path} is missing (pybabel init)"]
    with path.open("rb") as handle:
        catalog = read_po(handle, locale=locale)
    found: list[str] = []
    if catalog.fuzzy:
        found.append(f"{locale}: the catalogue header is marked fuzzy (pybabel compile skips it)")
    ids = set()
    forms_beyond_one = _forms_used_beyond_one(catalog)
    for message in catalog:
        if not message.id:  # the header
            continue
        ids.add((message.id, message.context))
        if message.fuzzy:
            found.append(f"{locale}: fuzzy {_label(message)}")
        elif not _is_translated(message):
            found.append(f"{locale}: untranslated {_label(message)}")
        elif _numberless_forms(message, forms_beyond_one):
            found.append(f"{locale}: a plural form that serves several counts lacks "
                         f"the number in {_label(message)}")
    for msgid, _context in sorted(template_ids - ids, key=str):
        label = msgid[0] if isinstance(msgid, (list, tuple)) else msgid
        found.append(f"{locale}: missing {label!r} (run pybabel update)")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--translations", type=Path, default=ROOT / "stampweb" / "translations")
    parser.add_argument("locales", nargs="*", default=list(SHIPPED))
    args = parser.parse_args(argv)

    template_ids: set = set()
    pot = args.translations / "messages.pot"
    if pot.exists():
        with pot.open("rb") as handle:
            template_ids = {(m.id, m.context) for m in read_po(handle) if m.id}

    found: list[str] = []
    for locale in args.locales:
        found += problems(args.translations, locale, template_ids)
    if found:
        print("\n".join(found))
        counts = {loc: sum(line.startswith(f"{loc}:") for line in found) for loc in args.locales}
        summary = ", ".join(f"{loc} {n}" for loc, n in counts.items() if n)
        print(f"incomplete catalogues: {summary}", file=sys.stderr)
        return 1
    print(f"translations complete: {', '.join(args.locales)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
