"""Two staff phones tapping Stamp on one card at the same moment, through the staff
page itself (each phone its own login session and form): one stamp, and the
other phone is told the card was just stamped."""

from __future__ import annotations

import re
import threading

from sqlalchemy import func, select

from stampweb.extensions import db
from stampweb.models import Visit
from stampweb.tenancy import tenant

from .factories import card_of, gen_customer, gen_merchant, gen_user, login

HTMX = {"HX-Request": "true"}


def _stamp_form(client, code: str) -> dict:
    page = client.get(f"/staff/card/{code}").text
    form = page[page.index('class="stamp-form"'):]
    form = form[: form.index("</form>")]
    return dict(re.findall(r'<input[^>]*name="([^"]+)"[^>]*value="([^"]*)"', form))


def test_two_phones_tap_stamp_at_once_and_one_stamp_is_recorded(app):
    with app.app_context():
        merchant = gen_merchant("twophones")
        gen_user(merchant, "staff", "a@twophones.test")
        gen_user(merchant, "staff", "b@twophones.test")
        code = card_of(gen_customer(merchant)).code
        merchant_id = merchant.id
    phones = [app.test_client(), app.test_client()]
    login(phones[0], "a@twophones.test")
    login(phones[1], "b@twophones.test")
    forms = [_stamp_form(phone, code) for phone in phones]
    assert forms[0]["request_key"] != forms[1]["request_key"]

    barrier = threading.Barrier(2)
    answers: list = [None, None]

    def tap(n):
        barrier.wait(timeout=10)
        answers[n] = phones[n].post(f"/staff/card/{code}/stamp", data=forms[n], headers=HTMX)

    threads = [threading.Thread(target=tap, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert [a.status_code for a in answers] == [200, 200]
    texts = sorted(a.text for a in answers)
    assert sum("Stamped: 1 of" in t for t in texts) == 1, texts
    assert sum("Already stamped" in t for t in texts) == 1, texts
    with app.app_context(), tenant(merchant_id):
        assert db.session.scalar(select(func.count(Visit.id))) == 1
