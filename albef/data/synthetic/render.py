"""Drawing a scene of the shapes world (:mod:`.scenes`) as a JPEG image.

Two filled shapes on a near-white, slightly tinted background, placed so that the
scene's relation is unambiguous (separated along the relation axis, close on the other
axis), drawn at 4x and downsampled for anti-aliasing.  Every draw comes from the ``rng``
given, so a render tag (a seeded ``random.Random``) fixes the bytes.
"""
from __future__ import annotations

import io
import random

from PIL import Image, ImageDraw

from albef.data.synthetic.scenes import _AXIS, COLORS, Scene

_SUPERSAMPLE = 4  # draw at 4x, downsample with LANCZOS (anti-aliasing)
_MARGIN_PX = 3.0  # objects stay this far inside the image border
_GAP_PX = 2.0  # minimum gap between the two objects' boxes along the relation axis
_OFF_AXIS_RATIO = 0.5  # |off-axis centre distance| <= ratio * on-axis centre distance
_SIZE_RANGE = (0.22, 0.34)  # shape box side as a fraction of image_size
_MIN_IMAGE_SIZE = 32


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, size: float, color: tuple) -> None:
    h = size / 2.0
    x0, y0, x1, y1 = cx - h, cy - h, cx + h, cy + h
    if shape == "circle":
        draw.ellipse([x0, y0, x1, y1], fill=color)
    elif shape == "square":
        draw.rectangle([x0, y0, x1, y1], fill=color)
    elif shape == "triangle":  # pointing up, filling the box
        draw.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=color)
    elif shape == "cross":  # plus sign, arms one third of the box thick
        t = size / 6.0
        draw.rectangle([cx - t, y0, cx + t, y1], fill=color)
        draw.rectangle([x0, cy - t, x1, cy + t], fill=color)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def _place(relation: str, size_a: float, size_b: float, image_size: int, rng: random.Random):
    """Centres (xa, ya), (xb, yb) such that object A is clearly ``relation`` of object B.

    Along the relation axis the boxes are separated by at least _GAP_PX; the off-axis
    centre distance is at most _OFF_AXIS_RATIO times the on-axis one; both boxes are at
    least _MARGIN_PX inside the image.
    """
    ha, hb = size_a / 2.0, size_b / 2.0
    lo_a, hi_a = _MARGIN_PX + ha, image_size - _MARGIN_PX - ha
    lo_b, hi_b = _MARGIN_PX + hb, image_size - _MARGIN_PX - hb
    dmin = ha + hb + _GAP_PX
    # on-axis: "first" is the object with the smaller coordinate (left / above)
    first_is_a = relation in ("left", "above")
    (lo_f, hi_f), (lo_s, hi_s) = ((lo_a, hi_a), (lo_b, hi_b)) if first_is_a else ((lo_b, hi_b), (lo_a, hi_a))
    f_hi = min(hi_f, hi_s - dmin)
    if f_hi < lo_f:
        raise ValueError("image_size too small to place two objects")  # guarded by _MIN_IMAGE_SIZE
    pf = rng.uniform(lo_f, f_hi)
    ps = rng.uniform(max(lo_s, pf + dmin), hi_s)
    on_a, on_b = (pf, ps) if first_is_a else (ps, pf)
    # off-axis: close enough that the relation stays unambiguous
    d = abs(on_b - on_a)
    off_a = rng.uniform(lo_a, hi_a)
    lo, hi = max(lo_b, off_a - _OFF_AXIS_RATIO * d), min(hi_b, off_a + _OFF_AXIS_RATIO * d)
    if hi < lo:  # cannot happen for the size range used; fall back to the nearest valid value
        hi = lo = min(max(off_a, lo_b), hi_b)
    off_b = rng.uniform(lo, hi)
    if _AXIS[relation] == "x":
        return (on_a, off_a), (on_b, off_b)
    return (off_a, on_a), (off_b, on_b)


def _render_with_boxes(scene: Scene, image_size: int, rng: random.Random, jpeg_quality: int) -> tuple[bytes, list[list[float]]]:
    """The JPEG bytes of ``scene`` and the boxes ``[[x, y, w, h] of object 1, [x, y, w, h] of
    object 2]`` (objects in the order of the scene tuple): each shape's square bounding box
    in pixels of the stored image, as floats (``x, y``: top-left corner; ``w == h``: the
    shape's size).  The circle is inscribed in its box, the triangle and the cross span it.
    """
    c1, s1, r, c2, s2 = scene
    size_a = rng.uniform(*_SIZE_RANGE) * image_size
    size_b = rng.uniform(*_SIZE_RANGE) * image_size
    (xa, ya), (xb, yb) = _place(r, size_a, size_b, image_size, rng)
    base = rng.randint(232, 246)
    bg = tuple(base + rng.randint(-6, 6) for _ in range(3))  # near-white, slightly tinted
    k = _SUPERSAMPLE
    big = Image.new("RGB", (image_size * k, image_size * k), bg)
    draw = ImageDraw.Draw(big)
    order = [(s1, xa, ya, size_a, COLORS[c1]), (s2, xb, yb, size_b, COLORS[c2])]
    if rng.random() < 0.5:
        order.reverse()  # objects never overlap; this only keeps drawing order unbiased
    for shape, cx, cy, size, color in order:
        _draw_shape(draw, shape, cx * k, cy * k, size * k, color)
    # box-reduce 4x -> 2x, then LANCZOS 2x -> 1x: same look as plain LANCZOS, twice as fast
    img = big.resize((image_size, image_size), Image.LANCZOS, reducing_gap=2.0)
    buf = io.BytesIO()
    # 4:4:4 chroma (subsampling=0): small images keep their colours crisp
    img.save(buf, format="JPEG", quality=jpeg_quality, subsampling=0, optimize=False)
    boxes = [[cx - size / 2.0, cy - size / 2.0, size, size] for cx, cy, size in ((xa, ya, size_a), (xb, yb, size_b))]
    return buf.getvalue(), boxes


def _render(scene: Scene, image_size: int, rng: random.Random, jpeg_quality: int) -> bytes:
    """The JPEG bytes of ``scene`` (see :func:`_render_with_boxes`)."""
    return _render_with_boxes(scene, image_size, rng, jpeg_quality)[0]
