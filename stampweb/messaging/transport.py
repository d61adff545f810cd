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

import binascii
import re
import secrets
import smtplib
import time
from contextlib import contextmanager
from dataclasses import dataclass
from email import policy as email_policy
from email.header import Header
from email.message import EmailMessage
from email.utils import formataddr, formatdate, getaddresses, make_msgid, parseaddr
from urllib.parse import urlsplit

from flask import current_app
from sqlalchemy import insert

from ..extensions import db
from ..models import MailboxMessage, utcnow
from ..tenancy import require_tenant
from . import dkim

# An address as SMTP wants it between angle brackets already (a dot-atom local
# part and a domain of plain labels): smtplib's quoteaddr() would return it
# unchanged after running its RFC 2822 parser, which cost a fifth of the CPU
# of an SMTP transaction. Anything else still goes through smtplib.
_ATEXT = "A-Za-z0-9!#$%&'*+/=?^_`{|}~-"
_PLAIN_ADDRESS = re.compile(
    rf"[{_ATEXT}]+(?:\.[{_ATEXT}]+)*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\Z")


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


class Withheld(TransportError):
    """The caller's `before_data()` said no: the transaction was reset before DATA."""


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


@dataclass(frozen=True)
class RawMessage:
    """A message serialised for the wire (CRLF line ends), with its envelope."""

    sender: str
    recipients: tuple[str, ...]
    data: bytes
    message_id: str
    subject: str
    # Lower-case names of its headers, for DKIM's h= tag.
    header_names: frozenset[str]


class BulkComposer:
    """Many multipart/alternative messages from one merchant, built fast.

    build_message() costs ~5 ms a message in the email package's header
    registry and generator (bench/send_batch_profile.py), more than all the
    rest of a campaign send. A campaign sends the same shape thousands of
    times, so the email package folds and encodes what is the same for every
    recipient once (From, List-Id, the MIME frame), and each message only
    adds its own headers and its quoted-printable bodies (binascii). The
    result parses to the same structure build_message() makes: text, then
    HTML, inside multipart/alternative, with Auto-Submitted and a Message-ID.

    A recipient address that is not ASCII needs SMTPUTF8 and the email
    package's handling, so compose() returns build_message()'s EmailMessage
    for it; the connections send either.
    """

    def __init__(self, merchant, headers: dict[str, str] | None = None):
        self.merchant = merchant
        self.sender = _sender_address(merchant)
        self.envelope_sender = parseaddr(self.sender)[1]
        self.headers = dict(headers or {})
        common = {"From": self.sender, **self.headers, "Auto-Submitted": "auto-generated"}
        self._common = "".join(_fold_header(name, clean_header(name, value))
                               for name, value in common.items())
        self._common_names = {name.lower() for name in common}
        self._boundary = f"=_{secrets.token_hex(16)}"
        self._host = _base_host()
        self._date: tuple[int, str] = (0, "")

    def message_id(self, key: str) -> str:
        """new_message_id(key), without parsing BASE_URL again for every message."""
        return f"<{key}@{self._host}>"

    def _now(self) -> str:
        """The Date header, formatted once a second rather than once a message."""
        second = int(time.time())
        if self._date[0] != second:
            self._date = (second, formatdate(second, usegmt=True))
        return self._date[1]

    def compose(self, *, to: str, subject: str, text: str, html: str,
                message_id: str, headers: dict[str, str] | None = None
                ) -> RawMessage | EmailMessage:
        """One message; `headers` are this recipient's own (List-Unsubscribe)."""
        headers = headers or {}
        if not (to.isascii() and self.envelope_sender.isascii()):
            return build_message(merchant=self.merchant, to=to, subject=subject, text=text,
                                 html=html, headers={**self.headers, **headers},
                                 message_id=message_id)
        message_id = clean_header("Message-ID", message_id)
        if not message_id.startswith("<"):
            message_id = f"<{message_id}>"
        own = {"To": to, "Subject": subject, "Date": self._now(),
               "Message-ID": message_id, **headers}
        lines = [self._common]
        for name, value in own.items():
            clean_header(name, value)
            if value.isascii():
                lines.append(f"{name}: {_fold_words(value, len(name) + 2)}\r\n")
            elif name == "Subject":
                # RFC 2047 encoded words; Header is several times cheaper than the policy.
                encoded = Header(value, "utf-8", header_name=name).encode(linesep="\r\n")
                lines.append(f"{name}: {encoded}\r\n")
            else:
                lines.append(_fold_header(name, value))
        boundary = self._boundary
        lines.append(
            f'MIME-Version: 1.0\r\nContent-Type: multipart/alternative;\r\n'
            f' boundary="{boundary}"\r\n\r\n'
        )
        data = "".join(lines).encode("ascii") + b"".join((
            _part(boundary, "plain", text), _part(boundary, "html", html),
            f"--{boundary}--\r\n".encode("ascii"),
        ))
        return RawMessage(
            sender=self.envelope_sender, recipients=(to,), data=data, message_id=message_id,
            subject=subject,
            header_names=frozenset({*self._common_names, *(n.lower() for n in own),
                                    "mime-version", "content-type"}),
        )


def _fold_header(name: str, value: str) -> str:
    """`Name: value` folded and RFC 2047-encoded by the email package, CRLF line ends."""
    return email_policy.SMTP.fold(*email_policy.SMTP.header_store_parse(name, value))


def _part(boundary: str, subtype: str, text: str) -> bytes:
    body = "\r\n".join(text.splitlines()) + "\r\n"
    # Quoted-printable never contains "=_", so the boundary cannot occur in a body.
    return (
        f'--{boundary}\r\nContent-Type: text/{subtype}; charset="utf-8"\r\n'
        "Content-Transfer-Encoding: quoted-printable\r\n\r\n"
    ).encode("ascii") + binascii.b2a_qp(body.encode("utf-8"), istext=True) + b"\r\n"


def _fold_words(value: str, used: int, limit: int = 78) -> str:
    """An ASCII header value folded at spaces so lines stay within `limit` where they can."""
    if used + len(value) <= limit or " " not in value:
        return value
    lines: list[str] = []
    line = ""
    for word in value.split(" "):
        if line and used + len(line) + 1 + len(word) > limit:
            lines.append(line)
            line, used = word, 1
        else:
            line = f"{line} {word}" if line else word
    lines.append(line)
    return "\r\n ".join(lines)


def _recipients(msg: EmailMessage) -> list[str]:
    values = [str(v) for key in ("To", "Cc", "Bcc") for v in msg.get_all(key, [])]
    return [address for _name, address in getaddresses(values) if address]


def _envelope_sender(msg: EmailMessage) -> str:
    return parseaddr(str(msg.get("Sender") or msg["From"]))[1]


class MailboxConnection:
    """The development mailbox: every message becomes a MailboxMessage row."""

    def send(self, msg: EmailMessage | RawMessage, meanwhile=None, before_data=None) -> None:
        merchant_id = require_tenant()
        if before_data is not None and not before_data():
            raise Withheld("withheld before DATA")
        if isinstance(msg, RawMessage):
            raw, recipients, subject, message_id = (
                msg.data, list(msg.recipients), msg.subject, msg.message_id)
        else:
            raw, recipients = msg.as_bytes(), _recipients(msg)
            subject, message_id = str(msg["Subject"] or ""), str(msg["Message-ID"] or "")
        with db.engine.begin() as connection:
            connection.execute(
                insert(MailboxMessage).values(
                    merchant_id=merchant_id,
                    to_address=", ".join(recipients)[:254],
                    subject=subject[:300],
                    message_id=message_id[:255] or None,
                    raw=raw,
                    created_at=utcnow(),
                )
            )
        if meanwhile is not None:
            meanwhile()

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
        self._dkim_key: dkim.DkimKey | None | bool = False  # False: not looked up yet

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

    def _key(self) -> dkim.DkimKey | None:
        """The DKIM key, read once per connection (a batch), not once per message."""
        if self._dkim_key is False:
            try:
                self._dkim_key = dkim.configured_key()
            except dkim.DkimKeyError as exc:
                raise TemporaryFailure(str(exc)) from exc
        return self._dkim_key

    def send(self, msg: EmailMessage | RawMessage, meanwhile=None, before_data=None) -> None:
        """Send one message; raise PermanentFailure or TemporaryFailure if it fails.

        `before_data()`, if given, is asked once the server has taken MAIL and
        RCPT, before DATA, when nothing can have been delivered yet: False
        resets the transaction and raises Withheld. A failure before that
        point leaves it unasked. `meanwhile()`, if given, is called once the
        whole message is on the wire and before the server's answer to it is
        read: the caller's own work (the next message) overlaps the
        server's. It must not raise.
        """
        recipients = list(msg.recipients) if isinstance(msg, RawMessage) else _recipients(msg)
        if not recipients:
            raise PermanentFailure("message has no recipient")
        # Signed last, after every header is final (a no-op without a DKIM key).
        key = self._key()
        if isinstance(msg, RawMessage):
            if key is not None:
                msg = dkim.sign_raw(msg, key)
        elif key is not None:
            msg = dkim.sign(msg, key)
        reused = self._smtp is not None
        if self._smtp is None:
            self._smtp = self._connect()
        try:
            self._transaction(self._smtp, msg, recipients, meanwhile, before_data)
        except _StaleConnection:
            # The server closed an idle connection before this message began:
            # nothing was sent, so one fresh connection may try again.
            self._drop()
            if not reused:
                raise TemporaryFailure("connection closed before MAIL") from None
            self._smtp = self._connect()
            self._send_once_more(msg, recipients, meanwhile, before_data)
        except TemporaryFailure as exc:
            if exc.code is None:  # the connection itself failed
                self._drop()
            raise

    def _send_once_more(self, msg: EmailMessage | RawMessage, recipients: list[str],
                        meanwhile=None, before_data=None) -> None:
        try:
            self._transaction(self._smtp, msg, recipients, meanwhile, before_data)
        except _StaleConnection:
            self._drop()
            raise TemporaryFailure("connection closed before MAIL") from None
        except TemporaryFailure as exc:
            if exc.code is None:
                self._drop()
            raise

    def _transaction(self, smtp: smtplib.SMTP, msg: EmailMessage | RawMessage,
                     recipients: list[str], meanwhile=None, before_data=None) -> None:
        if isinstance(msg, RawMessage):
            # ASCII headers and quoted-printable bodies: 7-bit clean as it is.
            sender, options, data = msg.sender, [], msg.data
        else:
            sender = _envelope_sender(msg)
            utf8 = any(not a.isascii() for a in [*recipients, sender])
            options = ["SMTPUTF8", "BODY=8BITMIME"] if utf8 and smtp.has_extn("smtputf8") else []
            policy = msg.policy.clone(linesep="\r\n", utf8=bool(options))
            data = msg.as_bytes(policy=policy)
        if smtp.does_esmtp and smtp.has_extn("size"):
            options.append(f"size={len(data)}")
        stage = "MAIL"
        try:
            code, reply = _mail(smtp, sender, options)
            if code != 250:
                self._reset(smtp)
                # A refused sender is our configuration, not the recipient's fault.
                raise TemporaryFailure(f"sender refused: {code} {reply!r}", code=code)
            stage = "RCPT"
            refused = {}
            for recipient in recipients:
                code, reply = _rcpt(smtp, recipient)
                if code not in (250, 251):
                    refused[recipient] = (code, reply)
            if len(refused) == len(recipients):
                self._reset(smtp)
                recipient, (code, reply) = next(iter(refused.items()))
                _raise_for_code(f"recipient refused: {code} {reply!r}", code, recipient)
            if before_data is not None and not before_data():
                self._reset(smtp)
                raise Withheld("withheld before DATA")
            stage = "DATA"
            code, reply = _data(smtp, data, meanwhile)
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


def _mail(smtp: smtplib.SMTP, sender: str, options: list[str]) -> tuple[int, bytes]:
    """smtp.mail(), without re-parsing a plain address."""
    if not _PLAIN_ADDRESS.match(sender) or any(o.lower() == "smtputf8" for o in options):
        return smtp.mail(sender, options)
    extra = " " + " ".join(options) if options and smtp.does_esmtp else ""
    smtp.putcmd("mail", f"FROM:<{sender}>{extra}")
    return smtp.getreply()


def _rcpt(smtp: smtplib.SMTP, recipient: str) -> tuple[int, bytes]:
    """smtp.rcpt(), without re-parsing a plain address."""
    if not _PLAIN_ADDRESS.match(recipient):
        return smtp.rcpt(recipient)
    smtp.putcmd("rcpt", f"TO:<{recipient}>")
    return smtp.getreply()


# A line that starts with a dot gets a second one (RFC 5321 4.5.2), as smtplib does.
_LEADING_DOT = re.compile(rb"(?m)^\.")


def _data(smtp: smtplib.SMTP, data: bytes, meanwhile=None) -> tuple[int, bytes]:
    """smtp.data() for CRLF bytes, calling `meanwhile()` before reading the final reply.

    smtplib's data() writes the message and waits for the answer in one call,
    so a worker would sit idle while the server reads the message; here the
    caller's work goes in between. The bytes on the wire are smtplib's.
    """
    smtp.putcmd("data")
    code, reply = smtp.getreply()
    if code != 354:
        raise smtplib.SMTPDataError(code, reply)
    quoted = _LEADING_DOT.sub(b"..", data)
    if quoted[-2:] != b"\r\n":
        quoted += b"\r\n"
    smtp.send(quoted + b".\r\n")
    if meanwhile is not None:
        try:
            meanwhile()
        finally:
            code, reply = smtp.getreply()
        return code, reply
    return smtp.getreply()


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
    "BulkComposer",
    "HeaderInjection",
    "PermanentFailure",
    "RawMessage",
    "TemporaryFailure",
    "TransportError",
    "Withheld",
    "build_message",
    "clean_header",
    "new_message_id",
    "open_connection",
]
