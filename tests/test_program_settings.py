"""Program settings, shop settings, locations and the printable join poster."""

from __future__ import annotations

import html
import re

import pytest
from sqlalchemy import select

from stampweb.extensions import db
from stampweb.loyalty import program as program_service
from stampweb.models import Location, Merchant, Program
from stampweb.tenancy import tenant

from .factories import csrf_token_from, gen_merchant, gen_user, login


@pytest.fixture
def shop(app):
    with app.app_context():
        merchant = gen_merchant("cafe", name="Cafe Central")
        gen_user(merchant, "manager", "manager@cafe.test")
        gen_user(merchant, "staff", "staff@cafe.test")
        return merchant.id


def _program(app, merchant_id) -> Program:
    with app.app_context(), tenant(merchant_id):
        return db.session.scalars(select(Program)).one()


def _field_error(page: str, field_id: str) -> str | None:
    """The error message rendered next to a field (the _forms.html field macro)."""
    match = re.search(rf'<p class="error" id="{field_id}-error">([^<]*)</p>', page)
    return html.unescape(match.group(1)) if match else None


def _input_value(page: str, field_id: str) -> str | None:
    tag = re.search(rf'<input[^>]*id="{field_id}"[^>]*>', page)
    if not tag:
        return None
    value = re.search(r'value="([^"]*)"', tag.group(0))
    return html.unescape(value.group(1)) if value else ""


PROGRAM_FORM = {
    "stamps_required": "8",
    "reward_text": "A free flat white",
    "birthday_gift_text": "Cake on us",
    "voucher_validity_days": "60",
    "stamp_cooldown_minutes": "10",
    "daily_stamp_cap": "",
}


def test_manager_saves_the_program(app, client, shop):
    """A manager changes the stamps per reward, texts, validity, cooldown and daily cap."""
    login(client, "manager@cafe.test")
    page = client.get("/admin/program")
    assert page.status_code == 200
    data = {**PROGRAM_FORM, "daily_stamp_cap": "3", "csrf_token": csrf_token_from(page.text)}
    response = client.post("/admin/program", data=data)
    assert response.status_code == 302
    program = _program(app, shop)
    assert (program.stamps_required, program.reward_text, program.birthday_gift_text) == (
        8, "A free flat white", "Cake on us"
    )
    assert (program.voucher_validity_days, program.stamp_cooldown_minutes) == (60, 10)
    assert program.daily_stamp_cap == 3


def test_empty_daily_cap_means_no_cap(app, client, shop):
    login(client, "owner@cafe.test")
    token = csrf_token_from(client.get("/admin/program").text)
    client.post("/admin/program", data={**PROGRAM_FORM, "csrf_token": token})
    assert _program(app, shop).daily_stamp_cap is None


@pytest.mark.parametrize(
    "field, typed",
    [
        ("stamps_required", "0"),
        ("stamps_required", "101"),
        ("stamps_required", "ten"),
        ("voucher_validity_days", "0"),
        ("voucher_validity_days", "3651"),
        ("stamp_cooldown_minutes", "-1"),
        ("stamp_cooldown_minutes", "1441"),
        ("daily_stamp_cap", "0"),
        ("daily_stamp_cap", "101"),
    ],
)
def test_bad_program_value_shows_message_next_to_field_and_keeps_input(
    app, client, shop, field, typed
):
    """Out-of-range or non-numeric values: message beside the field, typed text kept,
    nothing saved."""
    login(client, "manager@cafe.test")
    token = csrf_token_from(client.get("/admin/program").text)
    response = client.post(
        "/admin/program",
        data={**PROGRAM_FORM, field: typed, "reward_text": "Typed reward", "csrf_token": token},
    )
    assert response.status_code == 200
    assert _field_error(response.text, field)
    assert _input_value(response.text, field) == typed
    assert _input_value(response.text, "reward_text") == "Typed reward"
    assert _program(app, shop).reward_text != "Typed reward"


def test_program_service_refuses_out_of_range_values_without_saving(app, shop):
    """The service itself (for the API) answers per field and changes nothing."""
    with app.app_context():
        with pytest.raises(program_service.SettingsError) as caught:
            program_service.update_program(
                shop, stamps_required=0, reward_text="", birthday_gift_text="Cake",
                voucher_validity_days=4000, stamp_cooldown_minutes=5, daily_stamp_cap=None,
            )
        assert set(caught.value.errors) == {
            "stamps_required", "reward_text", "voucher_validity_days"
        }
    assert _program(app, shop).stamps_required == 10


def test_staff_cannot_open_program_settings_or_posters(client, shop):
    login(client, "staff@cafe.test")
    for url in ("/admin/program", "/admin/settings", "/admin/locations", "/admin/poster"):
        assert client.get(url).status_code == 403, url


SETTINGS_FORM = {
    "name": "Cafe Central",
    "timezone": "Europe/Vienna",
    "locale": "ru",
    "brand_color": "#112233",
    "sender_name": "Cafe Central",
    "sender_email": "Hello@Cafe.test",
    "postal_address": "Herrengasse 14, 1010 Wien",
    "quiet_hours_start": "22",
    "quiet_hours_end": "8",
    "frequency_cap": "2",
}


def test_manager_saves_shop_settings(app, client, shop):
    """Time zone, language, colour, sender, postal address, quiet hours, cap, double opt-in."""
    login(client, "manager@cafe.test")
    token = csrf_token_from(client.get("/admin/settings").text)
    response = client.post("/admin/settings", data={**SETTINGS_FORM, "csrf_token": token})
    assert response.status_code == 302
    with app.app_context():
        merchant = db.session.get(Merchant, shop)
        assert merchant.timezone == "Europe/Vienna"
        assert merchant.locale == "ru"
        assert merchant.brand_color == "#112233"
        assert merchant.sender_email == "hello@cafe.test"
        assert merchant.postal_address == "Herrengasse 14, 1010 Wien"
        assert (merchant.quiet_hours_start, merchant.quiet_hours_end) == (22, 8)
        assert merchant.frequency_cap == 2
        # The box was not ticked: double opt-in is switched off.
        assert merchant.double_opt_in is False


@pytest.mark.parametrize(
    "field, typed",
    [
        ("quiet_hours_start", "24"),
        ("frequency_cap", "0"),
        ("sender_email", "not an address"),
        ("name", ""),
    ],
)
def test_bad_shop_setting_shows_message_next_to_field(app, client, shop, field, typed):
    login(client, "manager@cafe.test")
    token = csrf_token_from(client.get("/admin/settings").text)
    response = client.post(
        "/admin/settings", data={**SETTINGS_FORM, field: typed, "csrf_token": token}
    )
    assert response.status_code == 200
    assert _field_error(response.text, field)
    assert _input_value(response.text, field) == typed
    with app.app_context():
        assert db.session.get(Merchant, shop).timezone == "UTC"


def test_unknown_time_zone_is_refused_by_the_service(app, shop):
    with app.app_context():
        with pytest.raises(program_service.SettingsError) as caught:
            program_service.update_merchant_settings(
                shop, name="X", timezone="Mars/Olympus", locale="en", brand_color="#000000",
                sender_name=None, sender_email=None, postal_address=None,
                quiet_hours_start=21, quiet_hours_end=9, frequency_cap=3, double_opt_in=True,
            )
        assert set(caught.value.errors) == {"timezone"}


# --- locations -------------------------------------------------------------------


def test_manager_adds_edits_and_deactivates_a_location(app, client, shop):
    login(client, "manager@cafe.test")
    token = csrf_token_from(client.get("/admin/locations").text)
    response = client.post(
        "/admin/locations",
        data={"name": "Riverside", "address": "1 River Rd", "latitude": "48.2082",
              "longitude": "16.3738", "csrf_token": token},
    )
    assert response.status_code == 302
    with app.app_context(), tenant(shop):
        riverside = db.session.scalars(select(Location).filter_by(name="Riverside")).one()
        assert (riverside.latitude, riverside.longitude) == (48.2082, 16.3738)
        location_id = riverside.id

    response = client.post(
        f"/admin/locations/{location_id}",
        data={"name": "Riverside Kiosk", "address": "", "latitude": "", "longitude": "",
              "csrf_token": token},
    )
    assert response.status_code == 302
    response = client.post(f"/admin/locations/{location_id}/active", data={"csrf_token": token})
    assert response.status_code == 302
    with app.app_context(), tenant(shop):
        riverside = db.session.get(Location, location_id)
        assert riverside.name == "Riverside Kiosk"
        assert riverside.latitude is None and riverside.longitude is None
        assert riverside.active is False
    assert "Deactivated" in client.get("/admin/locations").text


@pytest.mark.parametrize(
    "latitude, longitude, bad_field",
    [
        ("91", "10", "latitude"),
        ("-90.5", "10", "latitude"),
        ("45", "180.01", "longitude"),
        ("45", "", "longitude"),
        ("", "10", "latitude"),
        ("north", "10", "latitude"),
    ],
)
def test_location_coordinates_are_checked(
    app, client, shop, latitude, longitude, bad_field
):
    """Latitude −90..90, longitude −180..180, both or neither; typed values are kept."""
    login(client, "manager@cafe.test")
    token = csrf_token_from(client.get("/admin/locations").text)
    response = client.post(
        "/admin/locations",
        data={"name": "Odd place", "address": "", "latitude": latitude,
              "longitude": longitude, "csrf_token": token},
    )
    assert response.status_code == 200
    assert _field_error(response.text, bad_field)
    assert _input_value(response.text, "name") == "Odd place"
    assert _input_value(response.text, bad_field) == (latitude if bad_field == "latitude"
                                                      else longitude)
    with app.app_context(), tenant(shop):
        assert db.session.scalars(select(Location).filter_by(name="Odd place")).first() is None


# --- posters ---------------------------------------------------------------------


def test_merchant_poster_has_a_qr_code_of_the_join_url(app, client, shop):
    """The poster page carries an inline SVG QR code and the absolute join URL."""
    login(client, "manager@cafe.test")
    response = client.get("/admin/poster")
    assert response.status_code == 200
    base = app.config["BASE_URL"]
    assert "<svg" in response.text and "<path" in response.text
    assert f"{base}/join/cafe" in response.text
    assert "poster-page" in response.text  # the print stylesheet hides the nav on it


def test_location_poster_attributes_joins_to_the_location(app, client, shop):
    with app.app_context(), tenant(shop):
        location_id = db.session.scalars(select(Location.id)).first()
    login(client, "manager@cafe.test")
    response = client.get(f"/admin/locations/{location_id}/poster")
    assert response.status_code == 200
    assert "<svg" in response.text
    assert f"/join/cafe?location={location_id}" in response.text


def test_join_url_is_absolute_on_the_configured_base_url(app, shop):
    with app.app_context():
        poster = program_service.poster(shop, "https://loyalty.example/", None)
    assert poster.join_url == "https://loyalty.example/join/cafe"
    assert program_service.join_url("https://x.test", "cafe", 7) == (
        "https://x.test/join/cafe?location=7"
    )


def test_another_merchants_location_is_not_found(app, client, shop):
    with app.app_context():
        other = gen_merchant("other")
        with tenant(other.id):
            other_location = db.session.scalars(select(Location.id)).first()
    login(client, "manager@cafe.test")
    token = csrf_token_from(client.get("/admin/locations").text)
    assert client.get(f"/admin/locations/{other_location}").status_code == 404
    assert client.get(f"/admin/locations/{other_location}/poster").status_code == 404
    assert client.post(
        f"/admin/locations/{other_location}", data={"name": "Mine now", "csrf_token": token}
    ).status_code == 404
    assert client.post(
        f"/admin/locations/{other_location}/active", data={"csrf_token": token}
    ).status_code == 404
