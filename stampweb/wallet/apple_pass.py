"""The Apple Wallet `.pkpass` bundle: images, pass.json, manifest and CMS signature.

These functions take plain values, not ORM rows; stampweb.wallet.passkit
gathers a card's values and calls them.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import zipfile
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs7
from PIL import Image, ImageDraw, ImageFont, UnidentifiedImageError

PKPASS_MIMETYPE = "application/vnd.apple.pkpass"
MAX_LOCATIONS = 10

# Point sizes Apple lays out; @2x files are twice as many pixels.
ICON_SIZE = (29, 29)
LOGO_SIZE = (160, 50)


# --- images ------------------------------------------------------------------


def hex_to_rgb(color: str) -> tuple[int, int, int]:
    value = (color or "#6b3e26").lstrip("#")
    if len(value) == 3:
        value = "".join(ch * 2 for ch in value)
    try:
        return int(value[0:2], 16), int(value[2:4], 16), int(value[4:6], 16)
    except (ValueError, IndexError):
        return 0x6B, 0x3E, 0x26


def css_rgb(rgb: tuple[int, int, int]) -> str:
    return "rgb({}, {}, {})".format(*rgb)


def foreground_for(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    """White text on dark colours, near-black on light ones (WCAG relative luminance)."""

    def channel(c: int) -> float:
        c = c / 255
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (channel(c) for c in rgb)
    luminance = 0.2126 * r + 0.7152 * g + 0.0722 * b
    return (255, 255, 255) if luminance < 0.4 else (17, 17, 17)


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def _fit(source: Image.Image, size: tuple[int, int]) -> Image.Image:
    """The logo scaled to fit `size`, centred on a transparent canvas."""
    image = source.copy()
    image.thumbnail(size, Image.Resampling.LANCZOS)
    canvas = Image.new("RGBA", size, (0, 0, 0, 0))
    canvas.paste(image, ((size[0] - image.width) // 2, (size[1] - image.height) // 2))
    return canvas


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except (OSError, TypeError, ImportError):  # Pillow without FreeType
        return ImageFont.load_default()


def default_icon(name: str, color: str, size: tuple[int, int]) -> Image.Image:
    """A square in the brand colour with the merchant's initial: the fallback icon."""
    rgb = hex_to_rgb(color)
    image = Image.new("RGBA", size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    radius = max(2, size[0] // 5)
    draw.rounded_rectangle((0, 0, size[0] - 1, size[1] - 1), radius=radius, fill=rgb + (255,))
    initial = (name.strip()[:1] or "S").upper()
    font = _font(int(size[1] * 0.6))
    draw.text((size[0] / 2, size[1] / 2), initial, font=font, anchor="mm",
              fill=foreground_for(rgb) + (255,))
    return image


def default_logo(name: str, color: str, size: tuple[int, int]) -> Image.Image:
    """The fallback logo: the icon, left-aligned, on a transparent strip.

    The merchant's name is shown beside it by the pass itself (logoText),
    so it is not drawn twice here.
    """
    image = Image.new("RGBA", size, (0, 0, 0, 0))
    side = size[1]
    image.paste(default_icon(name, color, (side, side)), (0, 0))
    return image


@functools.lru_cache(maxsize=128)
def pass_images(name: str, color: str, logo: bytes | None) -> dict[str, bytes]:
    """icon.png, logo.png and their @2x versions, from the uploaded logo or a default.

    Cached by content: a merchant's images are rebuilt only when the logo,
    name or colour change, not on every pass download.
    """
    source = None
    if logo:
        try:
            source = Image.open(io.BytesIO(logo))
            source.load()
            source = source.convert("RGBA")
        except (UnidentifiedImageError, OSError, ValueError):
            source = None
    images = {}
    for filename, size in (("icon", ICON_SIZE), ("logo", LOGO_SIZE)):
        for suffix, scale in (("", 1), ("@2x", 2)):
            pixels = (size[0] * scale, size[1] * scale)
            if source is not None:
                # The icon is square: fit the logo into it rather than crop it.
                image = _fit(source, pixels)
            elif filename == "icon":
                image = default_icon(name, color, pixels)
            else:
                image = default_logo(name, color, pixels)
            images[f"{filename}{suffix}.png"] = _png(image)
    return images


# --- pass.json -------------------------------------------------------------------


@dataclass
class PassField:
    key: str
    label: str
    value: str | int
    change_message: str | None = None

    def as_json(self) -> dict:
        data = {"key": self.key, "label": self.label, "value": self.value}
        if self.change_message:
            data["changeMessage"] = self.change_message
        return data


@dataclass
class PassContent:
    """What one store card shows; built by the pass service from a card's rows."""

    pass_type_id: str
    team_id: str
    serial: str
    auth_token: str
    web_service_url: str
    organization: str
    description: str
    logo_text: str
    brand_color: str
    barcode_message: str
    barcode_alt_text: str
    header: list[PassField] = field(default_factory=list)
    primary: list[PassField] = field(default_factory=list)
    secondary: list[PassField] = field(default_factory=list)
    auxiliary: list[PassField] = field(default_factory=list)
    back: list[PassField] = field(default_factory=list)
    # (latitude, longitude, relevantText)
    locations: list[tuple[float, float, str]] = field(default_factory=list)
    # {"ru": {"Stamps": "Штампы", …}}: <locale>.lproj/pass.strings. Wallet shows
    # the labels in the phone's language when the pass has it, else pass.json's.
    localizations: dict[str, dict[str, str]] = field(default_factory=dict)


def pass_json(content: PassContent) -> dict:
    background = hex_to_rgb(content.brand_color)
    foreground = foreground_for(background)
    data = {
        "formatVersion": 1,
        "passTypeIdentifier": content.pass_type_id,
        "serialNumber": content.serial,
        "teamIdentifier": content.team_id,
        "organizationName": content.organization,
        "description": content.description,
        "logoText": content.logo_text,
        "backgroundColor": css_rgb(background),
        "foregroundColor": css_rgb(foreground),
        "labelColor": css_rgb(foreground),
        "webServiceURL": content.web_service_url,
        "authenticationToken": content.auth_token,
        "sharingProhibited": True,
        "barcodes": [
            {
                "format": "PKBarcodeFormatQR",
                "message": content.barcode_message,
                "messageEncoding": "iso-8859-1",
                "altText": content.barcode_alt_text,
            }
        ],
        "storeCard": {
            "headerFields": [f.as_json() for f in content.header],
            "primaryFields": [f.as_json() for f in content.primary],
            "secondaryFields": [f.as_json() for f in content.secondary],
            "auxiliaryFields": [f.as_json() for f in content.auxiliary],
            "backFields": [f.as_json() for f in content.back],
        },
    }
    if content.locations:
        data["locations"] = [
            {"latitude": lat, "longitude": lng, "relevantText": text}
            for lat, lng, text in content.locations[:MAX_LOCATIONS]
        ]
    return data


# --- manifest, signature, bundle ---------------------------------------------------


def manifest(files: dict[str, bytes]) -> bytes:
    """manifest.json: every file's SHA-1 hex digest, as Apple requires."""
    digests = {name: hashlib.sha1(data).hexdigest() for name, data in sorted(files.items())}
    return json.dumps(digests, indent=2).encode()


def sign_manifest(manifest_bytes: bytes, cert: x509.Certificate, key,
                  wwdr: x509.Certificate) -> bytes:
    """A detached CMS SignedData over the exact manifest bytes, embedding the WWDR cert.

    `Binary` matters: without it the data is canonicalised to CRLF before
    signing and the signature no longer matches the manifest in the zip.
    """
    return (
        pkcs7.PKCS7SignatureBuilder()
        .set_data(manifest_bytes)
        .add_signer(cert, key, hashes.SHA256())
        .add_certificate(wwdr)
        .sign(
            serialization.Encoding.DER,
            [pkcs7.PKCS7Options.DetachedSignature, pkcs7.PKCS7Options.Binary],
        )
    )


def _strings_literal(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + escaped.replace("\n", "\\n").replace("\r", "\\r") + '"'


def pass_strings(translations: dict[str, str]) -> bytes:
    """A pass.strings file: `"key" = "text";` lines, UTF-16 with a byte order mark
    (the encoding Apple documents for a pass's localized strings)."""
    lines = [f"{_strings_literal(key)} = {_strings_literal(text)};"
             for key, text in sorted(translations.items())]
    return ("\n".join(lines) + "\n").encode("utf-16")


def localization_files(content: PassContent) -> dict[str, bytes]:
    return {f"{locale}.lproj/pass.strings": pass_strings(strings)
            for locale, strings in sorted(content.localizations.items()) if strings}


def build_pkpass(content: PassContent, images: dict[str, bytes], cert: x509.Certificate,
                 key, wwdr: x509.Certificate) -> bytes:
    """The signed .pkpass bytes for one pass."""
    files = {"pass.json": json.dumps(pass_json(content), ensure_ascii=False).encode()}
    files.update(images)
    files.update(localization_files(content))
    manifest_bytes = manifest(files)
    files["manifest.json"] = manifest_bytes
    files["signature"] = sign_manifest(manifest_bytes, cert, key, wwdr)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as bundle:
        for name, data in files.items():
            bundle.writestr(name, data)
    return buffer.getvalue()


@functools.lru_cache(maxsize=64)
def square_logo(name: str, color: str, logo: bytes | None, side: int = 660) -> bytes:
    """A square PNG of the logo (or the default icon), e.g. Google Wallet's programLogo."""
    if logo:
        try:
            source = Image.open(io.BytesIO(logo))
            source.load()
            return _png(_fit(source.convert("RGBA"), (side, side)))
        except (UnidentifiedImageError, OSError, ValueError):
            pass
    return _png(default_icon(name, color, (side, side)))
