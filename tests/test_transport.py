"""The email transport: message shape, header safety, the mailbox and real SMTP."""

from __future__ import annotations

from email import message_from_bytes, policy

import pytest
from sqlalchemy import select

from stampweb.extensions import db
from stampweb.messaging.transport import (
    HeaderInjection,
    PermanentFailure,
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
