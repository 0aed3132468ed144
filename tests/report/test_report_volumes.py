"""Volumes for the viewer: voxel budget, downsampling, grey-level tables, encoding, the case payload."""

import math

import numpy as np
import pytest

from unetr.report import volumes as V


@pytest.mark.parametrize("shape, spacing, budget, expected", [
    ((40, 36, 24), (1.0, 1.0, 1.0), 10**6, (1, 1, 1)),  # fits: unchanged
    ((512, 512, 120), (0.7, 0.7, 5.0), 4_000_000, (3, 3, 1)),  # in-plane first, slices kept
    ((512, 512, 120), (0.7, 0.7, 5.0), 500_000, (8, 8, 1)),
    ((100, 100, 100), (1.0, 1.0, 1.0), 125_000, (2, 2, 2)),
])
def test_display_factors(shape, spacing, budget, expected):
    f = V.display_factors(shape, spacing, budget)
    assert f == expected
    assert math.prod(-(-n // k) for n, k in zip(shape, f)) <= budget


def test_display_factors_bad_arguments():
    with pytest.raises(ValueError, match="max_voxels"):
        V.display_factors((4, 4, 4), (1, 1, 1), 0)
    with pytest.raises(ValueError, match="3 entries"):
        V.display_factors((4, 4), (1, 1), 10)


def test_downsample_labels_takes_block_centres_and_keeps_the_grid():
    lab = np.arange(5 * 4 * 3, dtype=np.uint8).reshape(5, 4, 3)
    out = V.downsample_labels(lab, (2, 2, 1))
    assert out.shape == (3, 2, 3) and out.dtype == np.uint8
    assert out[0, 0, 0] == lab[1, 1, 0] and out[2, 1, 2] == lab[4, 3, 2]  # the last block's centre is clamped


def test_downsample_image_is_a_block_mean():
    img = np.arange(4 * 4 * 2, dtype=np.float32).reshape(4, 4, 2)
    out = V.downsample_image(img, (2, 2, 1))
    assert out.shape == (2, 2, 2)
    assert out[0, 0, 0] == pytest.approx(img[:2, :2, 0].mean())
    assert V.downsample_image(img, (1, 1, 1)) is not None and V.downsample_image(img, (1, 1, 1)).shape == img.shape


def test_quantize_keeps_few_values_exactly():
    img = np.array([-1000, 0, 40, 1000], np.float32)[np.random.default_rng(0).integers(0, 4, (6, 5, 4))]
    codes, table = V.quantize(img)
    np.testing.assert_array_equal(table[codes], img)


def test_quantize_error_is_within_half_the_widest_level_gap_and_fine_in_soft_tissue():
    rng = np.random.default_rng(1)
    img = np.concatenate([rng.normal(-1000, 20, 20000), rng.normal(50, 30, 60000), rng.normal(700, 200, 8000)])
    img = img.astype(np.float32).reshape(40, 40, 55)
    codes, table = V.quantize(img)
    assert codes.dtype == np.uint8 and len(table) <= 256 and np.all(np.diff(table) > 0)
    err = np.abs(table[codes] - img)
    assert err.max() <= np.diff(table).max() / 2 + 1e-3
    soft = (img > -160) & (img < 240)  # the soft-tissue window keeps a fine grey scale
    assert err[soft].max() < 10.0 and err[soft].mean() < 2.0  # HU; CT noise alone is 10-20 HU
    assert len(np.unique(codes[soft])) > 60


def test_quantize_bad_levels():
    with pytest.raises(ValueError, match="levels"):
        V.quantize(np.zeros((2, 2, 2)), levels=300)


def test_encode_round_trip_in_fortran_order():
    a = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)
    text = V.encode(a)
    np.testing.assert_array_equal(V.decode(text, a.shape), a)
    import base64
    import zlib

    raw = zlib.decompress(base64.b64decode(text))
    assert raw[:3] == bytes([a[0, 0, 0], a[1, 0, 0], a[2, 0, 0]])  # X varies fastest
    with pytest.raises(ValueError, match="uint8"):
        V.encode(a.astype(np.int16))


@pytest.mark.parametrize("modality, first", [("CT", "soft tissue"), ("MR", "1–99 %")])
def test_window_presets(modality, first):
    img = np.random.default_rng(0).normal(100, 20, (10, 10, 10)).astype(np.float32)
    presets = V.window_presets(img, modality)
    assert presets[0]["name"] == first and all(p["hi"] > p["lo"] for p in presets)
    if modality == "CT":
        assert {p["name"] for p in presets} >= {"soft tissue", "lung", "bone"}
        assert (presets[0]["lo"], presets[0]["hi"]) == (-160.0, 240.0)
    with pytest.raises(ValueError, match="modality"):
        V.window_presets(img, "PET")


def test_guess_modality():
    assert V.guess_modality(np.full((5, 5, 5), -1000.0)) == "CT"
    assert V.guess_modality(np.random.default_rng(0).uniform(0, 500, (5, 5, 5))) == "MR"


def test_case_volume_round_trip_small_case():
    rng = np.random.default_rng(0)
    img = rng.normal(0, 100, (20, 18, 12)).astype(np.float32)
    ref = np.zeros(img.shape, np.uint8)
    ref[3:9, 4:10, 2:6] = 1
    pred = np.roll(ref, 2, axis=0)
    v = V.case_volume(img, ref, pred, (0.8, 0.9, 2.5))
    assert v["shape"] == [20, 18, 12] and v["factors"] == [1, 1, 1] and v["note"] is None
    np.testing.assert_array_equal(V.decode(v["reference"], v["shape"]), ref)
    np.testing.assert_array_equal(V.decode(v["prediction"], v["shape"]), pred)
    assert v["point"] == [6, 6, 4]  # the centre of the reference's box (5.5, 6.5 and 3.5 round to even)
    levels = np.array(v["levels"], np.float32)
    assert np.abs(levels[V.decode(v["image"], v["shape"])] - img).max() < 10


def test_case_volume_large_case_is_coarser_with_a_note_not_dropped():
    img = np.zeros((200, 180, 60), np.float32)
    ref = np.zeros(img.shape, np.uint8)
    ref[50:150, 40:120, 10:50] = 3
    v = V.case_volume(img, ref, None, (0.7, 0.7, 3.0), max_voxels=100_000)
    assert math.prod(v["shape"]) <= 100_000 and v["source_shape"] == [200, 180, 60]
    assert v["spacing"] == pytest.approx([0.7 * v["factors"][0], 0.7 * v["factors"][1], 3.0 * v["factors"][2]])
    assert "budget" in v["note"] and v["prediction"] is None
    assert set(np.unique(V.decode(v["reference"], v["shape"]))) == {0, 3}


def test_case_volume_bad_inputs():
    img = np.zeros((6, 5, 4), np.float32)
    with pytest.raises(ValueError, match="reference shape"):
        V.case_volume(img, np.zeros((6, 5, 3), np.uint8), None, (1, 1, 1))
    with pytest.raises(ValueError, match="spacing"):
        V.case_volume(img, None, None, (1, 0, 1))
    with pytest.raises(ValueError, match="0..255"):
        V.case_volume(img, None, np.full(img.shape, 300, np.int32), (1, 1, 1))
    with pytest.raises(ValueError, match="image must be"):
        V.case_volume(img[0], None, None, (1, 1, 1))
