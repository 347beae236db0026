"""Draw the extension/module icon (128x128 PNG) and the sample-data thumbnail of the phantom.

Run from the repository root:  PYTHONPATH=LiverLocalization .venv/bin/python Resources/Icons/make_icons.py
The icon is a stylised liver split into Couinaud-coloured segments with a tumour and a location pin;
the thumbnail is an axial slice of the generated phantom (seed 7) with its true Couinaud segments.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from LiverLocalizationLib import labels

ROOT = Path(__file__).resolve().parents[2]
SCALE = 4  # supersampling for smooth edges


def _rgb(color, alpha=255):
    return tuple(int(round(255 * c)) for c in color) + (alpha,)


def draw_icon(size: int = 128) -> Image.Image:
    n = size * SCALE
    img = Image.new("RGBA", (n, n), (0, 0, 0, 0))
    # liver outline: broad right lobe (image left), tapering left lobe (image right)
    outline = [(0.08, 0.42), (0.16, 0.24), (0.34, 0.15), (0.58, 0.16), (0.80, 0.22), (0.95, 0.30), (0.90, 0.38),
               (0.70, 0.50), (0.52, 0.62), (0.36, 0.80), (0.20, 0.82), (0.10, 0.68)]
    poly = [(x * n, y * n) for x, y in outline]
    mask = Image.new("L", (n, n), 0)
    ImageDraw.Draw(mask).polygon(poly, fill=255)
    # segments: vertical-ish bands (planes through the hepatic veins) split by a transverse portal plane
    seg = Image.new("RGBA", (n, n), (0, 0, 0, 0))
    d = ImageDraw.Draw(seg)
    yy = 0.47 * n
    bands = [(0.0, 0.30, 7, 6), (0.30, 0.52, 8, 5), (0.52, 0.70, 4, 4), (0.70, 1.0, 2, 3)]
    for x0, x1, upper, lower in bands:
        d.rectangle([x0 * n, 0, x1 * n, yy], fill=_rgb(labels.COUINAUD_STYLES[upper].color))
        d.rectangle([x0 * n, yy, x1 * n, n], fill=_rgb(labels.COUINAUD_STYLES[lower].color))
    img.paste(seg, (0, 0), mask)
    d = ImageDraw.Draw(img)
    for x in (0.30, 0.52, 0.70):  # borders between segments
        d.line([(x * n, 0.1 * n), (x * n, 0.9 * n)], fill=(255, 255, 255, 0), width=1)
    border = Image.new("RGBA", (n, n), (0, 0, 0, 0))
    bd = ImageDraw.Draw(border)
    bd.line(poly + [poly[0]], fill=(90, 40, 30, 255), width=3 * SCALE, joint="curve")
    for x in (0.30, 0.52, 0.70):
        bd.line([(x * n, 0.0), (x * n, n)], fill=(255, 255, 255, 200), width=SCALE * 2)
    bd.line([(0, yy), (n, yy)], fill=(255, 255, 255, 200), width=SCALE * 2)
    inner = Image.new("RGBA", (n, n), (0, 0, 0, 0))
    inner.paste(border, (0, 0), mask)
    img = Image.alpha_composite(img, inner)
    d = ImageDraw.Draw(img)
    d.line(poly + [poly[0]], fill=(90, 40, 30, 255), width=3 * SCALE, joint="curve")
    # tumour in segment VIII with a location pin above it
    cx, cy, r = 0.41 * n, 0.36 * n, 0.07 * n
    d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=(60, 20, 20, 255), outline=(255, 255, 255, 255), width=2 * SCALE)
    pin_r = 0.085 * n
    px, py = cx + 0.02 * n, cy - 0.19 * n
    d.polygon([(px - pin_r * 0.8, py + pin_r * 0.4), (px + pin_r * 0.8, py + pin_r * 0.4), (cx + 0.005 * n, cy - r * 0.6)],
              fill=(200, 30, 45, 255))
    d.ellipse([px - pin_r, py - pin_r, px + pin_r, py + pin_r], fill=(200, 30, 45, 255), outline=(255, 255, 255, 255), width=2 * SCALE)
    d.ellipse([px - pin_r * 0.38, py - pin_r * 0.38, px + pin_r * 0.38, py + pin_r * 0.38], fill=(255, 255, 255, 255))
    return img.filter(ImageFilter.SMOOTH).resize((size, size), Image.LANCZOS)


def draw_phantom_thumbnail(width: int = 260, height: int = 280) -> Image.Image:
    """Axial slice through the phantom's liver centre, CT window 350/60, true Couinaud segments blended in."""
    import SimpleITK as sitk

    from LiverLocalizationLib.phantom import generate_phantom

    phantom = generate_phantom(seed=7, size="small")
    ct = sitk.GetArrayFromImage(phantom.ct).astype(float)
    cou = sitk.GetArrayFromImage(phantom.truth_couinaud)
    z = int(np.argmax((cou > 0).sum(axis=(1, 2))))
    grey = np.clip((ct[z] - (60 - 175)) / 350.0, 0, 1)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    for value, style in labels.COUINAUD_STYLES.items():
        m = cou[z] == value
        rgb[m] = 0.55 * rgb[m] + 0.45 * np.asarray(style.color)
    image = Image.fromarray((rgb * 255).astype(np.uint8))
    return image.resize((width, int(round(width * image.height / image.width))), Image.LANCZOS)


if __name__ == "__main__":
    icon = draw_icon()
    for path in (ROOT / "Resources/Icons/LiverLocalization.png", ROOT / "LiverLocalization/Resources/Icons/LiverLocalization.png"):
        path.parent.mkdir(parents=True, exist_ok=True)
        icon.save(path)
        print(path)
    thumb = draw_phantom_thumbnail()
    thumb.save(ROOT / "LiverLocalization/Resources/Icons/LiverPhantom.png")
    print(ROOT / "LiverLocalization/Resources/Icons/LiverPhantom.png", thumb.size)
