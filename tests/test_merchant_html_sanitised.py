"""Merchant-authored campaign text reaches people only sanitised: whatever Markdown
and HTML a merchant (or a stolen merchant account) writes, and whatever a
customer typed as their name, the HTML we send and preview holds only the
allowed tags and attributes, and links only http, https or mailto."""

from __future__ import annotations

from html.parser import HTMLParser
from urllib.parse import urlsplit

from hypothesis import given, settings
from hypothesis import strategies as st

from stampweb.campaigns.rendering import (
    ALLOWED_ATTRIBUTES,
    ALLOWED_TAGS,
    markdown_to_safe_html,
    personalise,
)

ATTACKS = [
    "<script>alert(1)</script>", "<img src=x onerror=alert(1)>", "<svg onload=alert(1)>",
    "[click](javascript:alert(1))", "<a href=\"javascript:alert(1)\">x</a>",
    "<a href=\"JaVaScRiPt:alert(1)\">x</a>", "<a href=\"jav&#x09;ascript:alert(1)\">x</a>",
    "<a href=\"data:text/html,<script>alert(1)</script>\">x</a>", "<iframe src=//evil.com>",
    "<style>body{display:none}</style>", "<form action=//evil.com><input name=p></form>",
    "<p style=\"background:url(javascript:alert(1))\">x</p>", "<a href=x onclick=alert(1)>y</a>",
    "<object data=x>", "<base href=//evil.com>", "<meta http-equiv=refresh content=0;url=//x>",
    "<!--", "-->", "<![CDATA[", "<", ">", "\"", "'", "`", "&", "![img](x\" onerror=\"alert(1))",
    "**bold**", "_em_", "# Title\n", "\n\n", "- item\n", "> quote\n", "    code\n",
    "{first_name}", "{first_name|<b>friend</b>}", "{card_url}", "{reward}",
]
NAMES = st.one_of(
    st.sampled_from(["<script>alert(1)</script>", "\"><img src=x onerror=alert(1)>", "Zoë",
                     "javascript:alert(1)", "{first_name}", ""]),
    st.text(max_size=30),
)


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.elements: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    body=st.lists(st.one_of(st.sampled_from(ATTACKS), st.text(max_size=12)), max_size=12)
    .map("".join),
    first_name=NAMES,
    reward=NAMES,
)
def test_campaign_html_holds_only_allowed_markup(body, first_name, reward):
    html = personalise(
        str(markdown_to_safe_html(body)),
        {"first_name": first_name, "reward": reward, "card_url": "https://shop.example/card/t"},
        html=True,
    )
    parser = _Collect()
    parser.feed(html)
    parser.close()
    for tag, attrs in parser.elements:
        assert tag in ALLOWED_TAGS, (tag, html)
        allowed = ALLOWED_ATTRIBUTES.get(tag, set()) | ({"rel"} if tag == "a" else set())
        assert set(attrs) <= allowed, (tag, attrs, html)
        href = attrs.get("href")
        if href is not None:
            assert urlsplit(href.strip()).scheme.lower() in {"", "http", "https", "mailto"}, html
    assert "<script" not in html.lower()
