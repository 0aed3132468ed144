"""The class colours: told apart at a glance, visible on grey, the same in the PNGs and the page."""

import itertools

import numpy as np
import pytest

from unetr.report import palette as P


def _lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB in [0, 1] -> CIELAB (D65)."""
    c = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    m = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]])
    xyz = c @ m.T / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)


def test_palette_colours_are_far_apart_and_saturated():
    lab = _lab(np.array([P.hex_to_rgb(h) for h in P.PALETTE]))
    dist = {(i, j): float(np.linalg.norm(lab[i] - lab[j])) for i, j in itertools.combinations(range(len(lab)), 2)}
    assert len(set(P.PALETTE)) == len(P.PALETTE) == 20
    assert min(dist.values()) >= 25, min(dist, key=dist.get)
    assert min(dist[i, i + 1] for i in range(len(lab) - 1)) >= 40  # neighbouring classes
    chroma = np.hypot(lab[:, 1], lab[:, 2])
    assert chroma.min() > 35  # none is a grey that vanishes on the image


def test_demo_classes_are_not_two_shades_of_one_hue():
    """Liver, spleen and kidney (classes 1-3) differ in hue by more than 60 degrees (the old PNGs: two oranges)."""
    lab = _lab(np.array([P.hex_to_rgb(h) for h in P.class_hex(4)[1:]]))
    hue = np.degrees(np.arctan2(lab[:, 2], lab[:, 1]))
    for i, j in itertools.combinations(range(3), 2):
        d = abs(hue[i] - hue[j]) % 360
        assert min(d, 360 - d) > 60


def test_class_colors_for_matplotlib_match_the_page():
    rgba = P.class_colors(23)
    assert rgba.shape == (23, 4) and rgba[0, 3] == 0 and np.all(rgba[1:, 3] == 1)
    for k, h in enumerate(P.class_hex(23)[1:], start=1):
        np.testing.assert_allclose(rgba[k, :3], P.hex_to_rgb(h))
    assert P.class_hex(23)[21] == P.PALETTE[0]  # class 21 wraps round to class 1's colour


def test_overlay_png_draws_the_palette(tmp_path):
    import matplotlib.image as mpimg

    from unetr.report import overlay_figure

    img = np.zeros((30, 26, 12), np.float32)
    ref = np.zeros(img.shape, np.uint8)
    ref[5:15, 5:20, 2:10] = 2
    out = overlay_figure(img, tmp_path / "o.png", reference=ref, alpha=1.0)
    pix = (mpimg.imread(out)[..., :3] * 255).round()
    spleen = np.round(P.hex_to_rgb(P.class_hex(3)[2]) * 255)
    assert (np.abs(pix - spleen).max(-1) <= 2).sum() > 100


@pytest.mark.parametrize("bad", ["E69F00", "#E69F0", "#E69F00FF"])
def test_hex_to_rgb_rejects_bad_colours(bad):
    with pytest.raises(ValueError, match="RRGGBB"):
        P.hex_to_rgb(bad)


def test_class_hex_needs_a_class():
    with pytest.raises(ValueError, match="num_classes"):
        P.class_hex(0)
