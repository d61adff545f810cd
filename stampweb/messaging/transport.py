"""The one way email leaves stampweb: SMTP when configured, else the development mailbox.

    with open_connection() as connection:
        for msg in messages:
            connection.send(msg)

One SMTP connection serves a whole batch, opened with MAIL_TIMEOUT so a hung
server fails the send long before the RQ job timeout (Flask-Mail passes no
timeout to smtplib, which is why the connection is opened here with Flask-Mail's
settings rather than through Flask-Mail). The envelope is sent step by step
(MAIL, RCPT, DATA) so that a failure can say whether the message may already
have been delivered: only a failure during DATA is ambiguous.

With no MAIL_SERVER the development mailbox keeps every message as a row the
merchant can read in the admin; nothing is ever dropped. It writes in its own
transaction, like an SMTP server accepting a message, so callers must not hold
an uncommitted write transaction while sending (on SQLite that would wait for
the busy timeout) — which they should not do across network I/O anyway.
"""

from __future__ import annotations

import smtplib
from contextlib import contextmanager
from email.message import EmailMessage
from email.utils import formataddr, formatdate, getaddresses, make_msgid, parseaddr
from urllib.parse import urlsplit

from flask import current_app
from sqlalchemy import insert

from ..extensions import db
from ..models import MailboxMessage, utcnow
from ..tenancy import require_tenant
from . import dkim


class TransportError(Exception):
    """Sending failed."""


class TemporaryFailure(TransportError):
    """Try again later: a 4xx answer, a dropped connection or a timeout.

    `maybe_sent` is True when the failure came while the message itself was
    being transmitted (a timeout or disconnect during DATA): the server may
    have accepted it, so the caller must not blindly send it again.
    """

    def __init__(self, message: str, *, code: int | None = None, maybe_sent: bool = False):
        super().__init__(message)
        self.code = code
        self.maybe_sent = maybe_sent


class PermanentFailure(TransportError):
    """The server refused the recipient or the message for good (5xx)."""

    def __init__(self, message: str, *, code: int | None = None, recipient: str | None = None):
        super().__init__(message)
        self.code = code
        self.recipient = recipient


class _StaleConnection(Exception):
    """The server had closed the connection before our MAIL command."""


class HeaderInjection(ValueError):
    """A header value contained a line break: refused, never sent."""


def clean_header(name: str, value: str) -> str:
    """The value, refused if it could start a new header (CR or LF)."""
    text = str(value)
    if "\r" in text or "\n" in text or "\r" in name or "\n" in name:
        raise HeaderInjection(f"line break in the {name!r} header")
    return text


def _base_host() -> str:
    return urlsplit(current_app.config["BASE_URL"]).hostname or "localhost"


def _sender_address(merchant) -> str:
    default_name, default_address = parseaddr(current_app.config["MAIL_DEFAULT_SENDER"] or "")
    address = merchant.sender_email or default_address or f"stampweb@{_base_host()}"
    name = merchant.sender_name or merchant.name or default_name
    return formataddr((clean_header("From", name), clean_header("From", address)))


def new_message_id(key: str | None = None) -> str:
    """A Message-ID on our own domain; a stable `key` gives the same id every time."""
    host = _base_host()
    if key is None:
        return make_msgid(domain=host)
    return f"<{key}@{host}>"


def build_message(
    *,
    merchant,
    to: str,
    subject: str,
    text: str,
    html: str,
    headers: dict[str, str] | None = None,
    message_id: str | None = None,
) -> EmailMessage:
    """A multipart/alternative message (text, then HTML) from the merchant.

    `message_id` may be given (with or without angle brackets) so a retried
    send carries the same id; otherwise a fresh one on BASE_URL's host is made.
    Any header value with a line break raises HeaderInjection.
    """
    msg = EmailMessage()
    msg["From"] = _sender_address(merchant)
    msg["To"] = clean_header("To", to)
    msg["Subject"] = clean_header("Subject", subject)
    msg["Date"] = formatdate(usegmt=True)
    if message_id:
        message_id = clean_header("Message-ID", message_id)
        if not message_id.startswith("<"):
            message_id = f"<{message_id}>"
    msg["Message-ID"] = message_id or new_message_id()
    msg["Auto-Submitted"] = "auto-generated"
    for name, value in (headers or {}).items():
        clean_header(name, value)
        if name in msg:
            del msg[name]
        msg[name] = value
    msg.set_content(text)
    msg.add_alternative(html, subtype="html")
    return msg


def _recipients(msg: EmailMessage) -> list[str]:
    values = [str(v) for key in ("To", "Cc", "Bcc") for v in msg.get_all(key, [])]
    return [address for _name, address in getaddresses(values) if address]


def _envelope_sender(msg: EmailMessage) -> str:
    return parseaddr(str(msg.get("Sender") or msg["From"]))[1]


class MailboxConnection:
    """The development mailbox: every message becomes a MailboxMessage row."""

    def send(self, msg: EmailMessage) -> None:
        merchant_id = require_tenant()
        raw = msg.as_bytes()
        with db.engine.begin() as connection:
            connection.execute(
                insert(MailboxMessage).values(
                    merchant_id=merchant_id,
                    to_address=", ".join(_recipients(msg))[:254],
                    subject=str(msg["Subject"] or "")[:300],
                    message_id=str(msg["Message-ID"] or "")[:255] or None,
                    raw=raw,
                    created_at=utcnow(),
                )
            )

    def close(self) -> None:
        pass


class SmtpConnection:
    """One SMTP session reused for many messages, reopened if the server drops it."""

    def __init__(self, config):
        self.host = config["MAIL_SERVER"]
        self.port = int(config.get("MAIL_PORT") or 25)
        self.use_tls = bool(config.get("MAIL_USE_TLS"))
        self.use_ssl = bool(config.get("MAIL_USE_SSL"))
        self.username = config.get("MAIL_USERNAME")
        self.password = config.get("MAIL_PASSWORD")
        self.timeout = config.get("MAIL_TIMEOUT") or 30
        self._smtp: smtplib.SMTP | None = None

    def _connect(self) -> smtplib.SMTP:
        try:
            if self.use_ssl:
                smtp = smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout)
            else:
                smtp = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
            smtp.ehlo_or_helo_if_needed()
            if self.use_tls:
                smtp.starttls()
                smtp.ehlo()
            if self.username:
                smtp.login(self.username, self.password or "")
        except smtplib.SMTPAuthenticationError as exc:
            # Wrong credentials are the operator's problem, not the recipient's.
            raise TemporaryFailure(f"SMTP login refused: {exc}", code=exc.smtp_code) from exc
        except (smtplib.SMTPException, OSError) as exc:
            raise TemporaryFailure(f"cannot connect to {self.host}:{self.port}: {exc}") from exc
        return smtp

    def _drop(self) -> None:
        smtp, self._smtp = self._smtp, None
        if smtp is not None:
            try:
                smtp.close()
            except OSError:
                pass

    def send(self, msg: EmailMessage) -> None:
        recipients = _recipients(msg)
        if not recipients:
            raise PermanentFailure("message has no recipient")
        # Signed last, after every header is final (a no-op without a DKIM key).
        msg = dkim.sign(msg)
        reused = self._smtp is not None
        if self._smtp is None:
            self._smtp = self._connect()
        try:
            self._transaction(self._smtp, msg, recipients)
        except _StaleConnection:
            # The server closed an idle connection before this message began:
            # nothing was sent, so one fresh connection may try again.
            self._drop()
            if not reused:
                raise TemporaryFailure("connection closed before MAIL") from None
            self._smtp = self._connect()
            self._send_once_more(msg, recipients)
        except TemporaryFailure as exc:
            if exc.code is None:  # the connection itself failed
                self._drop()
            raise

    def _send_once_more(self, msg: EmailMessage, recipients: list[str]) -> None:
        try:
            self._transaction(self._smtp, msg, recipients)
        except _StaleConnection:
            self._drop()
            raise TemporaryFailure("connection closed before MAIL") from None
        except TemporaryFailure as exc:
            if exc.code is None:
                self._drop()
            raise

    def _transaction(self, smtp: smtplib.SMTP, msg: EmailMessage, recipients: list[str]) -> None:
        utf8 = any(not a.isascii() for a in [*recipients, _envelope_sender(msg)])
        options = ["SMTPUTF8", "BODY=8BITMIME"] if utf8 and smtp.has_extn("smtputf8") else []
        policy = msg.policy.clone(linesep="\r\n", utf8=bool(options))
        data = msg.as_bytes(policy=policy)
        if smtp.does_esmtp and smtp.has_extn("size"):
            options.append(f"size={len(data)}")
        stage = "MAIL"
        try:
            code, reply = smtp.mail(_envelope_sender(msg), options)
            if code != 250:
                self._reset(smtp)
                # A refused sender is our configuration, not the recipient's fault.
                raise TemporaryFailure(f"sender refused: {code} {reply!r}", code=code)
            stage = "RCPT"
            refused = {}
            for recipient in recipients:
                code, reply = smtp.rcpt(recipient)
                if code not in (250, 251):
                    refused[recipient] = (code, reply)
            if len(refused) == len(recipients):
                self._reset(smtp)
                recipient, (code, reply) = next(iter(refused.items()))
                _raise_for_code(f"recipient refused: {code} {reply!r}", code, recipient)
            stage = "DATA"
            code, reply = smtp.data(data)
            if code != 250:
                self._reset(smtp)
                _raise_for_code(f"message refused: {code} {reply!r}", code, recipients[0])
        except smtplib.SMTPResponseException as exc:
            # smtplib raises for some answers itself (e.g. DATA's 354 step).
            self._reset(smtp)
            _raise_for_code(str(exc), exc.smtp_code, recipients[0])
        except (smtplib.SMTPServerDisconnected, OSError) as exc:
            closed = isinstance(exc, smtplib.SMTPServerDisconnected | ConnectionError)
            if stage == "MAIL" and closed:
                raise _StaleConnection() from exc
            raise TemporaryFailure(
                f"connection lost during {stage}: {exc}", maybe_sent=stage == "DATA"
            ) from exc

    @staticmethod
    def _reset(smtp: smtplib.SMTP) -> None:
        try:
            smtp.rset()
        except (smtplib.SMTPException, OSError):
            pass

    def close(self) -> None:
        smtp, self._smtp = self._smtp, None
        if smtp is None:
            return
        try:
            smtp.quit()
        except (smtplib.SMTPException, OSError):
            smtp.close()


def _raise_for_code(message: str, code: int, recipient: str | None) -> None:
    if 500 <= code < 600:
        raise PermanentFailure(message, code=code, recipient=recipient)
    raise TemporaryFailure(message, code=code)


@contextmanager
def open_connection():
    """Yield a connection with `send(msg)`; SMTP if MAIL_SERVER is set, else the mailbox."""
    config = current_app.config
    connection = SmtpConnection(config) if config.get("MAIL_SERVER") else MailboxConnection()
    try:
        yield connection
    finally:
        connection.close()


__all__ = [
    "HeaderInjection",
    "PermanentFailure",
    "TemporaryFailure",
    "TransportError",
    "build_message",
    "clean_header",
    "new_message_id",
    "open_connection",
]
