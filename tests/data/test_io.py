"""Reading and writing volumes: round trips, headers, channels, and every bad file named."""

import gzip
import sys

import nibabel as nib
import numpy as np
import pytest
from data_helpers import save_nifti

from unetr.data.io import Geometry, read_geometry, read_image, read_label, write_image, write_label
from unetr.errors import DataError

SHAPE = (32, 32, 48)
LPS = np.array([[-0.8, 0, 0, 10.0], [0, -0.9, 0, -20.0], [0, 0, 2.5, 30.0], [0, 0, 0, 1]])


def _ramp(shape=SHAPE, dtype=np.int16):
    return (np.arange(np.prod(shape)) % 1000 - 500).reshape(shape).astype(dtype)


def test_read_image_shape_geometry(tmp_path):
    data = _ramp()
    p = save_nifti(tmp_path / "a.nii.gz", data, LPS)
    image, geom = read_image(p)
    assert image.shape == (1, *SHAPE) and image.dtype == np.float32
    np.testing.assert_array_equal(image[0], data)
    np.testing.assert_allclose(geom.affine, LPS)
    assert geom.shape == SHAPE and geom.axcodes == ("L", "P", "S") and geom.dtype == "int16"
    np.testing.assert_allclose(geom.spacing, (0.8, 0.9, 2.5), rtol=1e-6)


def test_uncompressed_and_scaled(tmp_path):
    img = nib.Nifti1Image(_ramp(), LPS)
    img.header.set_slope_inter(2.0, -5.0)
    nib.save(img, str(tmp_path / "s.nii"))
    image, _ = read_image(tmp_path / "s.nii")
    np.testing.assert_allclose(image[0], _ramp() * 2.0 - 5.0)


def test_4d_image_is_channels_last(tmp_path):
    data = np.stack([_ramp(), _ramp() * 2, _ramp() * 3], axis=-1)  # (X, Y, Z, 3)
    image, _ = read_image(save_nifti(tmp_path / "m.nii.gz", data, LPS))
    assert image.shape == (3, *SHAPE)
    for c in range(3):
        np.testing.assert_array_equal(image[c], data[..., c])


def test_channel_files_are_stacked(tmp_path):
    paths = [save_nifti(tmp_path / f"c_{i:04d}.nii.gz", _ramp() + i, LPS) for i in range(2)]
    image, _ = read_image(paths)
    assert image.shape == (2, *SHAPE)
    np.testing.assert_array_equal(image[1] - image[0], 1)


def test_4d_file_among_channel_files(tmp_path):
    a = save_nifti(tmp_path / "c_0000.nii.gz", _ramp(), LPS)
    b = save_nifti(tmp_path / "c_0001.nii.gz", np.stack([_ramp()] * 2, -1), LPS)
    with pytest.raises(DataError, match="c_0001.nii.gz: expected a 3D volume.*one file per channel"):
        read_image([a, b])


def test_channel_files_on_different_grids(tmp_path):
    a = save_nifti(tmp_path / "c_0000.nii.gz", _ramp(), LPS)
    b = save_nifti(tmp_path / "c_0001.nii.gz", _ramp(), np.eye(4))
    with pytest.raises(DataError, match="c_0001.*differs"):
        read_image([a, b])


def test_write_label_keeps_reference_header(tmp_path):
    ref = nib.Nifti1Image(_ramp(), LPS)
    qform = LPS.copy()
    qform[:3, 3] += 1.0  # a qform that differs from the sform
    ref.set_qform(qform, code=1)
    ref.set_sform(LPS, code=2)
    nib.save(ref, str(tmp_path / "ref.nii.gz"))
    _, geom = read_image(tmp_path / "ref.nii.gz")
    label = (np.arange(np.prod(SHAPE)) % 5).reshape(SHAPE)
    write_label(tmp_path / "lab.nii.gz", label, geom)
    out = nib.load(str(tmp_path / "lab.nii.gz"))
    assert out.get_data_dtype() == np.uint8
    q, qc = out.header.get_qform(coded=True)
    s, sc = out.header.get_sform(coded=True)
    assert (int(qc), int(sc)) == (1, 2)
    np.testing.assert_allclose(q, qform, atol=1e-5)
    np.testing.assert_allclose(s, LPS, atol=1e-6)
    back, lgeom = read_label(tmp_path / "lab.nii.gz")
    np.testing.assert_array_equal(back, label)
    assert lgeom.same_grid(geom)
    assert not list(tmp_path.glob(".*"))  # no temporary file left


def test_write_label_large_classes_and_bad_values(tmp_path):
    geom = Geometry.from_affine(LPS, SHAPE)
    big = np.zeros(SHAPE, dtype=np.int32)
    big[0, 0, 0] = 300
    write_label(tmp_path / "big.nii.gz", big, geom)
    assert nib.load(str(tmp_path / "big.nii.gz")).get_data_dtype() == np.int16
    with pytest.raises(ValueError, match="non-integer"):
        write_label(tmp_path / "x.nii.gz", np.full(SHAPE, 0.5), geom)
    with pytest.raises(ValueError, match="shape"):
        write_label(tmp_path / "x.nii.gz", np.zeros((4, 4, 4), np.uint8), geom)
    assert not (tmp_path / "x.nii.gz").exists()


def test_write_is_atomic(tmp_path, monkeypatch):
    geom = Geometry.from_affine(LPS, SHAPE)
    target = tmp_path / "keep.nii.gz"
    write_image(target, _ramp(), geom)
    before = target.read_bytes()

    def boom(img, filename):
        with open(filename, "wb") as f:
            f.write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(nib, "save", boom)
    with pytest.raises(OSError):
        write_image(target, _ramp() + 1, geom)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["keep.nii.gz"]


def test_write_image_channels_round_trip(tmp_path):
    geom = Geometry.from_affine(LPS, SHAPE)
    data = np.random.default_rng(0).normal(size=(2, *SHAPE)).astype(np.float32)
    write_image(tmp_path / "img.nii.gz", data, geom)
    back, g2 = read_image(tmp_path / "img.nii.gz")
    np.testing.assert_array_equal(back, data)
    assert g2.same_grid(geom)
    assert Geometry.from_dict(g2.to_dict()) == g2


def _gz(tmp_path, name, payload: bytes):
    p = tmp_path / name
    p.write_bytes(payload)
    return p


@pytest.mark.parametrize("kind", ["truncated", "corrupt", "not_gzip", "text", "tiny", "missing", "ending",
                                  "folder"])
def test_bad_files_are_named(tmp_path, kind):
    good = save_nifti(tmp_path / "good.nii.gz", _ramp(), LPS).read_bytes()
    if kind == "truncated":
        p = _gz(tmp_path, "bad.nii.gz", good[: len(good) // 2])
        msg = "truncated"
    elif kind == "corrupt":
        raw = bytearray(good)
        raw[len(raw) // 2: len(raw) // 2 + 64] = b"\x00" * 64
        p = _gz(tmp_path, "bad.nii.gz", bytes(raw))
        msg = "corrupt gzip|truncated"
    elif kind == "not_gzip":
        p = _gz(tmp_path, "bad.nii.gz", gzip.decompress(good))
        msg = "not gzip"
    elif kind == "text":
        p = _gz(tmp_path, "bad.nii", b"hello, this is not an image " * 40)
        msg = "not a NIfTI"
    elif kind == "tiny":
        p = _gz(tmp_path, "bad.nii", b"\x00" * 10)
        msg = "not a NIfTI"
    elif kind == "missing":
        p = tmp_path / "bad.nii.gz"
        msg = "no such file"
    elif kind == "ending":
        p = _gz(tmp_path, "bad.png", b"\x89PNG")
        msg = "not a supported image"
    else:
        p = tmp_path / "bad.nii"
        p.mkdir()
        msg = "folder"
    with pytest.raises(DataError, match=msg) as info:
        read_image(p)
    assert "bad." in str(info.value)


def test_truncated_voxel_data(tmp_path):
    raw = gzip.decompress(save_nifti(tmp_path / "g.nii.gz", _ramp(), LPS).read_bytes())
    p = _gz(tmp_path, "short.nii", raw[:-1000])
    with pytest.raises(DataError, match="short.nii.*truncated image data"):
        read_image(p)


@pytest.mark.parametrize("shape", [(32, 48), (32, 48, 1)])
def test_2d_image_rejected(tmp_path, shape):
    p = save_nifti(tmp_path / "flat.nii.gz", np.zeros(shape, np.int16))
    with pytest.raises(DataError, match="flat.nii.gz.*2D"):
        read_image(p)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_nan_inf_rejected(tmp_path, value):
    data = np.zeros(SHAPE, np.float32)
    data[3, 4, 5] = value
    p = save_nifti(tmp_path / "nan.nii.gz", data)
    with pytest.raises(DataError, match="nan.nii.gz: 1 voxel.*NaN or Inf"):
        read_image(p)
    with pytest.raises(DataError, match="NaN or Inf"):
        read_label(p)


def test_label_checks(tmp_path):
    frac = np.zeros(SHAPE, np.float32)
    frac[0, 0, 0] = 1.5
    with pytest.raises(DataError, match="frac.nii.gz.*non-integer"):
        read_label(save_nifti(tmp_path / "frac.nii.gz", frac))
    neg = np.zeros(SHAPE, np.int16)
    neg[1, 1, 1] = -1
    with pytest.raises(DataError, match="neg.nii.gz.*negative"):
        read_label(save_nifti(tmp_path / "neg.nii.gz", neg))
    with pytest.raises(DataError, match="four.nii.gz.*3D"):
        read_label(save_nifti(tmp_path / "four.nii.gz", np.zeros((*SHAPE, 2), np.uint8)))
    whole = np.zeros(SHAPE, np.float32)
    whole[2, 2, 2] = 3.0  # float storage of integer values is fine
    lab, _ = read_label(save_nifti(tmp_path / "whole.nii.gz", whole))
    assert lab.dtype == np.uint8 and lab.max() == 3


def test_read_geometry_reads_header_only(tmp_path):
    p = save_nifti(tmp_path / "h.nii.gz", _ramp(), LPS)
    geom, shape = read_geometry(p)
    assert shape == SHAPE and geom.shape == SHAPE
    np.testing.assert_allclose(geom.affine, LPS)


def test_itk_formats_match_nifti(tmp_path):
    sitk = pytest.importorskip("SimpleITK")
    p = save_nifti(tmp_path / "a.nii.gz", _ramp(), LPS)
    sitk.WriteImage(sitk.ReadImage(str(p)), str(tmp_path / "a.mha"))  # SimpleITK's own conversion
    a, ga = read_image(p)
    b, gb = read_image(tmp_path / "a.mha")
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(ga.affine, gb.affine, atol=1e-5)
    write_label(tmp_path / "l.nrrd", (_ramp() > 0).astype(np.uint8), gb)
    lab, gl = read_label(tmp_path / "l.nrrd")
    np.testing.assert_array_equal(lab, _ramp() > 0)
    np.testing.assert_allclose(gl.affine, LPS, atol=1e-5)


def test_itk_missing_gives_a_clear_message(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "SimpleITK", None)
    p = _gz(tmp_path, "a.mha", b"x")
    with pytest.raises(DataError, match="SimpleITK"):
        read_image(p)
