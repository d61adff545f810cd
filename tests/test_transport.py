"""The email transport: message shape, header safety, the mailbox and real SMTP."""

from __future__ import annotations

import smtplib
from email import message_from_bytes, policy

import pytest
from sqlalchemy import select

from stampweb.extensions import db
from stampweb.messaging.transport import (
    BulkComposer,
    HeaderInjection,
    PermanentFailure,
    RawMessage,
    TemporaryFailure,
    build_message,
    open_connection,
)
from stampweb.models import MailboxMessage
from stampweb.tenancy import tenant, unscoped

from .factories import gen_merchant
from .servers import SmtpSink


@pytest.fixture
def shop(app):
    with app.app_context():
        merchant = gen_merchant("cafe", name="Cafe Ada", sender_name="Ada's Cafe",
                                sender_email="hello@cafe.example")
        yield merchant


def _message(merchant, to="guest@example.com", subject="Hello", **kwargs):
    return build_message(
        merchant=merchant, to=to, subject=subject, text="Plain words", html="<p>Rich words</p>",
        **kwargs,
    )


def test_message_is_multipart_alternative_from_the_merchant(app, shop):
    """Text then HTML in multipart/alternative, From the merchant, Message-ID on our host."""
    app.config["BASE_URL"] = "https://loyalty.example.org"
    msg = _message(shop, headers={"List-Id": "<offers.cafe.loyalty.example.org>"})
    parsed = message_from_bytes(msg.as_bytes(), policy=policy.default)
    assert parsed.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in parsed.iter_parts()] == ["text/plain", "text/html"]
    assert parsed["From"] == "Ada's Cafe <hello@cafe.example>"
    assert parsed["Message-ID"].endswith("@loyalty.example.org>")
    assert parsed["Auto-Submitted"] == "auto-generated"
    assert parsed["List-Id"] == "<offers.cafe.loyalty.example.org>"


def test_a_given_message_id_is_kept_for_retries(app, shop):
    """A stable Message-ID passed in is used as it is (brackets added)."""
    msg = _message(shop, message_id="c4-r7-email@localhost")
    assert msg["Message-ID"] == "<c4-r7-email@localhost>"


def test_sender_falls_back_to_mail_default_sender(app, shop):
    """A merchant without a sender address sends from MAIL_DEFAULT_SENDER, under its name."""
    shop.sender_email = None
    shop.sender_name = None
    app.config["MAIL_DEFAULT_SENDER"] = "Loyalty <noreply@loyalty.example.org>"
    assert _message(shop)["From"] == "Cafe Ada <noreply@loyalty.example.org>"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"subject": "Hi\r\nBcc: victim@example.com"},
        {"subject": "Hi\nBcc: victim@example.com"},
        {"to": "guest@example.com\r\nBcc: victim@example.com"},
        {"headers": {"List-Unsubscribe": "<https://x/u/1>\r\nBcc: victim@example.com"}},
        {"message_id": "abc\r\nBcc: victim@example.com"},
    ],
)
def test_line_breaks_in_headers_are_refused(app, shop, kwargs):
    """CR/LF in any header value raises HeaderInjection: no extra header can be smuggled in."""
    with pytest.raises(HeaderInjection):
        _message(shop, **kwargs)


def _bulk(merchant, to="guest@example.com", subject="Hello", **kwargs):
    composer = BulkComposer(merchant, {"List-Id": "Café Ada <offers.cafe.loyalty.example.org>",
                                       "Precedence": "bulk"})
    return composer.compose(to=to, subject=subject, message_id=kwargs.pop("message_id", "m1.c1@x"),
                            text=kwargs.pop("text", "Plain words = fine\n" + "é" * 120),
                            html=kwargs.pop("html", "<p>Rich words</p>"), **kwargs)


def test_bulk_messages_have_the_shape_of_build_message(app, shop):
    """The campaign sender's fast composer: the same MIME structure and headers as
    build_message, bodies and non-ASCII headers decoded back intact."""
    app.config["BASE_URL"] = "https://loyalty.example.org"
    long_subject = "Two for one this weekend, " * 5 + "Zoë"
    msg = _bulk(shop, subject=long_subject, headers={
        "List-Unsubscribe": "<https://loyalty.example.org/u/" + "t" * 120 + ">, "
                            "<mailto:unsubscribe@loyalty.example.org?subject=u-1>"})
    assert isinstance(msg, RawMessage)
    assert all(len(line) <= 998 for line in msg.data.split(b"\r\n"))
    assert b"\n" not in msg.data.replace(b"\r\n", b"")
    parsed = message_from_bytes(msg.data, policy=policy.default)
    assert parsed.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in parsed.iter_parts()] == ["text/plain", "text/html"]
    assert parsed["From"] == "Ada's Cafe <hello@cafe.example>"
    assert parsed["To"] == "guest@example.com"
    assert parsed["Subject"] == long_subject
    assert parsed["Message-ID"] == msg.message_id == "<m1.c1@x>"
    assert parsed["Auto-Submitted"] == "auto-generated"
    assert parsed["List-Id"] == "Café Ada <offers.cafe.loyalty.example.org>"
    assert parsed["List-Unsubscribe"].startswith("<https://loyalty.example.org/u/tttt")
    # Parsed from wire bytes, the lines end in CRLF.
    plain = parsed.get_body(("plain",)).get_content().replace("\r\n", "\n")
    assert plain == "Plain words = fine\n" + "é" * 120 + "\n"
    assert parsed.get_body(("html",)).get_content().strip() == "<p>Rich words</p>"
    assert msg.recipients == ("guest@example.com",) and msg.sender == "hello@cafe.example"


def test_bulk_messages_refuse_line_breaks_in_headers(app, shop):
    for kwargs in ({"subject": "Hi\r\nBcc: victim@example.com"},
                   {"to": "guest@example.com\nBcc: victim@example.com"},
                   {"message_id": "abc\r\nBcc: victim@example.com"},
                   {"headers": {"List-Unsubscribe": "<https://x/u/1>\nBcc: v@example.com"}}):
        with pytest.raises(HeaderInjection):
            _bulk(shop, **kwargs)


def test_bulk_message_to_a_non_ascii_address_uses_build_message(app, shop):
    """SMTPUTF8 addresses take the email package's path, which knows how to send them."""
    msg = _bulk(shop, to="zoë@example.com")
    assert not isinstance(msg, RawMessage)
    assert msg["To"] == "zoë@example.com" and msg["List-Id"]


def test_bulk_messages_go_to_the_mailbox(app, shop):
    with tenant(shop.id):
        with open_connection() as connection:
            connection.send(_bulk(shop, to="one@example.com", subject="First"))
        db.session.commit()
        [row] = db.session.scalars(select(MailboxMessage)).all()
    assert (row.to_address, row.subject, row.message_id) == ("one@example.com", "First",
                                                              "<m1.c1@x>")
    assert message_from_bytes(row.raw, policy=policy.default)["Subject"] == "First"


def test_without_mail_server_messages_are_kept_in_the_mailbox(app, shop):
    """No MAIL_SERVER: each message becomes a MailboxMessage row of its merchant."""
    assert not app.config.get("MAIL_SERVER")
    with tenant(shop.id):
        with open_connection() as connection:
            connection.send(_message(shop, to="one@example.com", subject="First"))
            connection.send(_message(shop, to="two@example.com", subject="Second"))
        db.session.commit()  # end our read snapshot: the mailbox wrote on its own connection
        rows = db.session.scalars(select(MailboxMessage).order_by(MailboxMessage.id)).all()
    assert [(r.to_address, r.subject, r.merchant_id) for r in rows] == [
        ("one@example.com", "First", shop.id),
        ("two@example.com", "Second", shop.id),
    ]
    parsed = message_from_bytes(rows[0].raw, policy=policy.default)
    assert parsed.get_body(("plain",)).get_content().strip() == "Plain words"
    assert rows[0].message_id == parsed["Message-ID"]


def test_mailbox_keeps_the_message_even_if_the_callers_transaction_rolls_back(app, shop):
    """Like an SMTP server, the mailbox keeps what it accepted whatever the caller does next."""
    with tenant(shop.id):
        with open_connection() as connection:
            connection.send(_message(shop))
        db.session.rollback()
        assert db.session.query(MailboxMessage).count() == 1


# --- real SMTP ----------------------------------------------------------------------------------


@pytest.fixture
def smtp(app):
    with SmtpSink() as sink:
        app.config.update(MAIL_SERVER=sink.host, MAIL_PORT=sink.port, MAIL_TIMEOUT=2)
        yield sink


@pytest.mark.integration
def test_smtp_sends_many_messages_over_one_connection(app, shop, smtp):
    """With MAIL_SERVER set, messages go to the SMTP server, a batch on one session."""
    with open_connection() as connection:
        for n in range(3):
            connection.send(_message(shop, to=f"guest{n}@example.com", subject=f"No {n}"))
        first_socket = connection._smtp.sock
        assert first_socket is not None
    received = smtp.wait_for(3)
    assert [m.subject for m in received] == ["No 0", "No 1", "No 2"]
    assert received[0].rcpt_tos == ("guest0@example.com",)
    assert received[0].mail_from == "hello@cafe.example"
    assert received[0].message.get_content_type() == "multipart/alternative"
    with unscoped():
        assert db.session.query(MailboxMessage).count() == 0


@pytest.mark.integration
def test_smtp_550_for_the_recipient_is_a_permanent_failure(app, shop, smtp):
    """A refused recipient raises PermanentFailure; the next message still goes out."""
    smtp.reject_addresses = {"gone@example.com"}
    with open_connection() as connection:
        with pytest.raises(PermanentFailure) as caught:
            connection.send(_message(shop, to="gone@example.com"))
        assert caught.value.code == 550 and caught.value.recipient == "gone@example.com"
        connection.send(_message(shop, to="fine@example.com"))
    assert [m.rcpt_tos for m in smtp.wait_for(1)] == [("fine@example.com",)]


@pytest.mark.integration
def test_smtp_550_at_data_is_a_permanent_failure(app, shop, smtp):
    """A message refused at DATA with 5xx is permanent too."""
    smtp.mode = "reject"
    smtp.reject_stage = "data"
    with open_connection() as connection, pytest.raises(PermanentFailure):
        connection.send(_message(shop))


@pytest.mark.integration
def test_smtp_451_is_a_temporary_failure(app, shop, smtp):
    """A 4xx answer raises TemporaryFailure (the job retries later); nothing was delivered."""
    smtp.fail_next(1)
    with open_connection() as connection:
        with pytest.raises(TemporaryFailure) as caught:
            connection.send(_message(shop))
        assert caught.value.code == 451 and not caught.value.maybe_sent
        connection.send(_message(shop, subject="After the hiccup"))
    assert [m.subject for m in smtp.wait_for(1)] == ["After the hiccup"]


@pytest.mark.integration
def test_a_hung_smtp_server_times_out_as_a_maybe_sent_temporary_failure(app, shop, smtp):
    """A server that never answers DATA trips MAIL_TIMEOUT; the failure says it may be sent."""
    app.config["MAIL_TIMEOUT"] = 1
    smtp.mode = "hang"
    with open_connection() as connection, pytest.raises(TemporaryFailure) as caught:
        connection.send(_message(shop))
    assert caught.value.maybe_sent


def test_an_unreachable_smtp_server_is_a_temporary_failure(app, shop):
    """Connection refused: TemporaryFailure, so the job is retried later."""
    from .servers import free_port

    app.config.update(MAIL_SERVER="127.0.0.1", MAIL_PORT=free_port(), MAIL_TIMEOUT=2)
    with open_connection() as connection, pytest.raises(TemporaryFailure):
        connection.send(_message(shop))


@pytest.mark.integration
def test_bulk_messages_go_over_smtp(app, shop, smtp):
    with tenant(shop.id), open_connection() as connection:
        connection.send(_bulk(shop, to="two@example.com", subject="Second"))
        connection.send(_bulk(shop, to="three@example.com", subject="Third"))
    assert [m.rcpt_tos for m in smtp.messages] == [("two@example.com",), ("three@example.com",)]
    assert smtp.messages[1].message["Subject"] == "Third"


@pytest.mark.parametrize("address", [
    "guest@example.com", "first.last+tag@mail.example.co.uk", "o'brien@shop.example",
    "Guest <guest@example.com>", "a..b@example.com", "quoted\"local@example.com",
    "guest@[127.0.0.1]", "spaced name@example.com",
])
def test_envelope_addresses_go_out_as_smtplib_would_send_them(address):
    """The fast path for plain addresses sends the very MAIL and RCPT commands
    smtplib's own parser would; anything unusual is left to smtplib."""
    from stampweb.messaging import transport

    class Recording(smtplib.SMTP):
        does_esmtp = True

        def __init__(self):
            super().__init__()
            self.commands = []

        def putcmd(self, cmd, args=""):
            self.commands.append(f"{cmd} {args}")

        def getreply(self):
            return 250, b"OK"

    ours, theirs = Recording(), Recording()
    transport._mail(ours, address, ["size=10"])
    transport._rcpt(ours, address)
    theirs.mail(address, ["size=10"])
    theirs.rcpt(address)
    assert ours.commands == theirs.commands


def test_bulk_message_ids_and_dates_match_the_one_off_ones(app, shop):
    from email.utils import parsedate_to_datetime

    from stampweb.messaging.transport import new_message_id

    composer = BulkComposer(shop)
    assert composer.message_id("m7.c3") == new_message_id("m7.c3")
    raw = composer.compose(to="a@example.com", subject="Hi", text="t", html="<p>h</p>",
                           message_id=composer.message_id("m7.c3"))
    parsed = message_from_bytes(raw.data, policy=policy.default)
    assert parsed["Message-ID"] == new_message_id("m7.c3")
    sent_at = parsedate_to_datetime(parsed["Date"])
    assert abs((sent_at - parsedate_to_datetime(_message(shop)["Date"])).total_seconds()) <= 1


@pytest.mark.parametrize("body", [
    b"Subject: x\r\n\r\nplain\r\n", b".leading dot\r\n.\r\n..two\r\nmid.dot\r\n",
    b"no final line break", b"",
])
def test_data_writes_what_smtplib_writes_and_works_before_the_reply(body):
    """DATA split in two sends smtplib's very bytes (dot-stuffing, the final
    line break and dot), and the caller's work runs after the message is written
    and before the server's answer is read."""
    from stampweb.messaging import transport

    class Recording(smtplib.SMTP):
        def __init__(self):
            super().__init__()
            self.wire = []

        def putcmd(self, cmd, args=""):
            self.wire.append(f"{cmd} {args}".strip())

        def send(self, data):
            self.wire.append(data)

        def getreply(self):
            self.wire.append("reply")
            return (354, b"go on") if self.wire[-2] == "data" else (250, b"OK")

    ours, theirs = Recording(), Recording()
    assert transport._data(ours, body, lambda: ours.wire.append("meanwhile")) == (250, b"OK")
    assert theirs.data(body) == (250, b"OK")
    assert ours.wire == [*theirs.wire[:-1], "meanwhile", "reply"]


@pytest.mark.integration
def test_work_meanwhile_runs_while_the_server_reads_each_message(app, shop, smtp):
    """connection.send(meanwhile=...) calls it once a message, after the ones
    before it were answered, and before this message's own answer: a server
    that never answers DATA still sees it run, and the send then times out as
    maybe sent, as it would without it."""
    seen = []
    with tenant(shop.id), open_connection() as connection:
        for n in range(3):
            connection.send(_bulk(shop, to=f"g{n}@example.com", subject=f"No {n}"),
                            meanwhile=lambda: seen.append(len(smtp.messages)))
    assert [m.message["Subject"] for m in smtp.wait_for(3)] == ["No 0", "No 1", "No 2"]
    assert len(seen) == 3 and all(n <= count <= n + 1 for n, count in enumerate(seen))

    app.config["MAIL_TIMEOUT"] = 1
    smtp.mode = "hang"
    ran = []
    with (tenant(shop.id), open_connection() as connection,
          pytest.raises(TemporaryFailure) as caught):
        connection.send(_bulk(shop), meanwhile=lambda: ran.append(True))
    assert ran == [True] and caught.value.maybe_sent


@pytest.mark.integration
def test_before_data_can_withhold_a_message_after_mail_and_rcpt(app, shop, smtp):
    """before_data() is asked once the server took MAIL and RCPT: False resets
    the transaction, raises Withheld and delivers nothing, and the connection
    goes on with the next message. A refused recipient leaves it unasked."""
    from stampweb.messaging.transport import Withheld

    asked = []
    smtp.reject_addresses = {"gone@example.com"}
    with tenant(shop.id), open_connection() as connection:
        with pytest.raises(Withheld):
            connection.send(_bulk(shop, to="held@example.com"),
                            before_data=lambda: asked.append("held") or False)
        with pytest.raises(PermanentFailure):
            connection.send(_bulk(shop, to="gone@example.com"),
                            before_data=lambda: asked.append("gone") or True)
        connection.send(_bulk(shop, to="sent@example.com"),
                        before_data=lambda: asked.append("sent") or True)
        first_socket = connection._smtp.sock
    assert asked == ["held", "sent"]
    assert [m.rcpt_tos for m in smtp.wait_for(1)] == [("sent@example.com",)]
    assert smtp.data_count == 1 and first_socket is not None


def test_the_mailbox_asks_before_data_too(app, shop):
    """Without MAIL_SERVER, a withheld message is not kept in the mailbox."""
    from stampweb.messaging.transport import Withheld

    with tenant(shop.id), open_connection() as connection:
        with pytest.raises(Withheld):
            connection.send(_bulk(shop, to="held@example.com"), before_data=lambda: False)
        connection.send(_bulk(shop, to="kept@example.com"), before_data=lambda: True)
    db.session.commit()  # end our read snapshot: the mailbox wrote on its own connection
    with unscoped():
        assert [m.to_address for m in db.session.scalars(select(MailboxMessage))] == [
            "kept@example.com"]
