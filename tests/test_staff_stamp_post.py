"""The stamp POST read two ways: StampPost.read_plain (the fast path for the usual
tap) must agree with StampForm on everything it accepts, and leave the rest to it."""

from __future__ import annotations

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from werkzeug.datastructures import MultiDict

from stampweb.web.staff.forms import StampForm, StampPost

DIGITS = st.text("0123456789", min_size=1, max_size=3)
STAMPS = st.one_of(st.none(), DIGITS, st.text(max_size=6),
                   st.sampled_from(["", " ", "1", "20", "21", "0", "+3", " 3", "1_0", "٣", "2.0"]))
AMOUNTS = st.one_of(st.none(), st.text(max_size=24),
                    st.sampled_from(["", " ", "4.50", "4,50", "0", "-1", "1e3", "nan", " 7 ",
                                     "99999999.99", "100000000", "12345678901234567890",
                                     "123456789012345678901"]))
KEYS = st.one_of(st.none(), st.text(max_size=90), st.sampled_from(["", "a" * 80, "a" * 81]))


def _form_data(stamps, amount, key) -> MultiDict:
    data = MultiDict()
    for name, value in (("stamps", stamps), ("amount", amount), ("request_key", key)):
        if value is not None:
            data.add(name, value)
    return data


@settings(max_examples=400, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(stamps=STAMPS, amount=AMOUNTS, key=KEYS)
@example(stamps="1", amount="", key="0123456789abcdef")
@example(stamps="3", amount="4.50", key=None)
@example(stamps=None, amount=None, key=None)
def test_the_plain_reading_agrees_with_the_stamp_form(app, stamps, amount, key):
    """Whatever read_plain accepts, StampForm accepts with the same stamps, amount and key."""
    data = _form_data(stamps, amount, key)
    with app.test_request_context("/staff/card/X/stamp", method="POST", data=data):
        plain = StampPost.read_plain(data)
        form = StampForm(formdata=data, meta={"csrf": False})
        valid = form.validate()
        if plain is not None:
            assert valid, (data, form.errors)
            assert plain == StampPost.of(form)


def test_the_usual_tap_is_read_plainly(app):
    """One tap (stamps=1, no amount) and a count with an amount never need the form."""
    assert StampPost.read_plain(MultiDict({"stamps": "1", "amount": "", "request_key": "k" * 20})) \
        == StampPost(1, None, "k" * 20)
    with app.test_request_context():
        post = StampPost.read_plain(MultiDict({"stamps": "4", "amount": "4,5"}))
    assert post is not None and post.stamps == 4 and str(post.amount) == "4.50"


def test_anything_with_a_message_to_show_goes_to_the_form(app):
    """Out of range, not a number, a bad amount: read_plain declines, StampForm explains."""
    with app.test_request_context():
        for stamps, amount in (("0", ""), ("21", ""), ("x", ""), ("1", "abc"), ("1", "-2"),
                               ("1", "1" * 21)):
            assert StampPost.read_plain(MultiDict({"stamps": stamps, "amount": amount})) is None
