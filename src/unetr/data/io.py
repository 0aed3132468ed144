"""Reading and writing volumes: an array ``(C, X, Y, Z)`` plus its :class:`Geometry`.

nibabel is imported here and nowhere else in the package. NIfTI (``.nii``, ``.nii.gz``) is read by
nibabel's header parser with a fast path for the voxel data (one-shot ``zlib`` inflation and a zero-copy
view of the decompressed buffer); ``.nrrd``, ``.mha``, ``.mhd`` go through SimpleITK when it is installed.

Every problem with a file raises :class:`unetr.errors.DataError` naming the file and the problem.

Example:
    >>> image, geom = read_image("imagesTr/case_0000.nii.gz")       # doctest: +SKIP
    >>> image.shape, geom.spacing                                     # doctest: +SKIP
    ((1, 512, 512, 120), (0.8, 0.8, 2.5))
    >>> write_label("pred.nii.gz", mask, geom)                        # doctest: +SKIP
"""

from __future__ import annotations

import io as _io
import logging
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Tuple, Union

import numpy as np

from unetr.data.checks import check_labels, check_same_grid, grid_problem
from unetr.errors import DataError
from unetr.fsutil import atomic_path

log = logging.getLogger(__name__)

PathLike = Union[str, Path]
NIFTI_ENDINGS = (".nii.gz", ".nii")
ITK_ENDINGS = (".nrrd", ".nhdr", ".mha", ".mhd")
IMAGE_ENDINGS = NIFTI_ENDINGS + ITK_ENDINGS


def file_ending(path: PathLike) -> str:
    """The volume ending of ``path`` (``.nii.gz``, ``.nii``, ``.mha`` ...), or its last suffix."""
    name = str(path).lower()
    for end in IMAGE_ENDINGS:
        if name.endswith(end):
            return end
    return Path(name).suffix


def _mat(value: Any) -> Optional[np.ndarray]:
    return None if value is None else np.asarray(value, dtype=np.float64).reshape(4, 4)


@dataclass(frozen=True, eq=False)
class Geometry:
    """Where a volume lies in space, and what is needed to write a file with the reference's header.

    Attributes:
        affine: (4, 4) float64 voxel-to-world (RAS+ mm) matrix of the file.
        shape: spatial shape (X, Y, Z) as stored in the file.
        spacing: voxel size in mm along the file's array axes (X, Y, Z).
        axcodes: orientation codes of the array axes, e.g. ``('L', 'P', 'S')``.
        dtype: the on-disk data type (``int16``, ``float32`` ...).
        qform / sform: the NIfTI qform and sform matrices (None when the code is 0 or the file is not NIfTI).
        qform_code / sform_code: the NIfTI codes (1 scanner, 2 aligned ...).
        xyzt_units: the NIfTI units byte.
    """

    affine: np.ndarray
    shape: Tuple[int, int, int]
    spacing: Tuple[float, float, float]
    axcodes: Tuple[str, str, str] = ("R", "A", "S")
    dtype: str = "float32"
    qform: Optional[np.ndarray] = field(default=None, repr=False)
    sform: Optional[np.ndarray] = field(default=None, repr=False)
    qform_code: int = 0
    sform_code: int = 1
    xyzt_units: int = 10  # mm and seconds

    def __post_init__(self) -> None:
        object.__setattr__(self, "affine", _mat(self.affine))
        object.__setattr__(self, "qform", _mat(self.qform))
        object.__setattr__(self, "sform", _mat(self.sform))
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        object.__setattr__(self, "spacing", tuple(float(s) for s in self.spacing))
        object.__setattr__(self, "axcodes", tuple(str(c) for c in self.axcodes))
        if len(self.shape) != 3 or len(self.spacing) != 3:
            raise ValueError(f"Geometry needs a 3D shape and spacing, got {self.shape} and {self.spacing}")

    @classmethod
    def from_affine(cls, affine: np.ndarray, shape: Sequence[int], dtype: str = "float32") -> Geometry:
        """A geometry for a new volume: spacing and orientation come from ``affine`` (sform and qform set)."""
        import nibabel as nib

        affine = np.asarray(affine, dtype=np.float64)
        spacing = tuple(float(s) for s in np.sqrt((affine[:3, :3] ** 2).sum(axis=0)))
        return cls(affine=affine, shape=tuple(shape), spacing=spacing, axcodes=nib.aff2axcodes(affine),
                   dtype=str(np.dtype(dtype)), qform=affine, sform=affine, qform_code=1, sform_code=1)

    def same_grid(self, other: Geometry) -> bool:
        """True when both describe the same voxel grid (the rule of :func:`unetr.data.checks.grid_problem`)."""
        return grid_problem(self, other) is None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Geometry):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    def to_dict(self) -> dict:
        """A JSON-able dict (lists of floats); :meth:`from_dict` restores it."""
        out: dict = {
            "affine": self.affine.tolist(), "shape": list(self.shape), "spacing": list(self.spacing),
            "axcodes": list(self.axcodes), "dtype": self.dtype, "qform_code": int(self.qform_code),
            "sform_code": int(self.sform_code), "xyzt_units": int(self.xyzt_units),
            "qform": None if self.qform is None else self.qform.tolist(),
            "sform": None if self.sform is None else self.sform.tolist(),
        }
        return out

    @classmethod
    def from_dict(cls, data: dict) -> Geometry:
        return cls(**{k: (tuple(v) if k in ("shape", "spacing", "axcodes") else v) for k, v in data.items()})


# ----------------------------------------------------------------------------------------------- NIfTI


def _inflate(raw: bytes, path: Path) -> bytes:
    """Decompress a whole gzip file in one call (several times faster than a streamed GzipFile)."""
    try:
        d = zlib.decompressobj(wbits=31)
        out = d.decompress(raw)
        if not d.eof:
            raise DataError(f"{path}: truncated gzip stream (the file ends before the compressed data does)")
        if d.unused_data:  # multi-member gzip: rare, let the stdlib handle it
            import gzip

            return gzip.decompress(raw)
        return out
    except zlib.error as e:
        raise DataError(f"{path}: corrupt gzip data ({e})") from None


def _load_nifti(path: Path):
    """(nibabel image whose header and affine are valid, voxel array view) with the data decoded fast."""
    import nibabel as nib

    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder, not an image file") from None
    if raw[:2] == b"\x1f\x8b":
        raw = _inflate(raw, path)
    elif str(path).lower().endswith(".gz"):
        raise DataError(f"{path}: named .gz but not gzip-compressed")
    if len(raw) < 348:
        raise DataError(f"{path}: not a NIfTI image (only {len(raw)} bytes)")
    sizeof = int.from_bytes(raw[:4], "little")
    if sizeof not in (348, 540):
        sizeof = int.from_bytes(raw[:4], "big")
    if sizeof not in (348, 540):
        raise DataError(f"{path}: not a NIfTI image (bad header size {sizeof})")
    klass = nib.Nifti1Image if sizeof == 348 else nib.Nifti2Image
    try:
        header = klass.header_class.from_fileobj(_io.BytesIO(raw[: sizeof + 4]), check=False)
        shape = header.get_data_shape()
        dtype = header.get_data_dtype()
        offset = int(header.get_data_offset())
        count = int(np.prod(shape)) if shape else 0
        if offset + count * dtype.itemsize > len(raw):
            raise DataError(
                f"{path}: truncated image data ({len(raw) - offset} bytes for {count * dtype.itemsize} expected)"
            )
        data = np.frombuffer(raw, dtype=dtype, count=count, offset=offset).reshape(shape, order="F")
        img = klass(data, header.get_best_affine(), header=header)
        slope, inter = header.get_slope_inter()
    except DataError:
        raise
    except Exception as e:  # nibabel raises many types for broken headers
        raise DataError(f"{path}: not a readable NIfTI image ({type(e).__name__}: {e})") from None
    return img, data, slope, inter


def _geometry_from_nifti(img, shape: Tuple[int, ...]) -> Geometry:
    import nibabel as nib

    hdr = img.header
    affine = np.asarray(img.affine, dtype=np.float64)
    qform, qcode = hdr.get_qform(coded=True)
    sform, scode = hdr.get_sform(coded=True)
    spacing = tuple(float(s) for s in np.sqrt((affine[:3, :3] ** 2).sum(axis=0)))
    return Geometry(
        affine=affine, shape=tuple(shape[:3]), spacing=spacing, axcodes=nib.aff2axcodes(affine),
        dtype=str(hdr.get_data_dtype().newbyteorder("=")), qform=qform, sform=sform,
        qform_code=int(qcode), sform_code=int(scode), xyzt_units=int(hdr["xyzt_units"]),
    )


def _read_nifti(path: Path, dtype: Optional[np.dtype]) -> Tuple[np.ndarray, Geometry]:
    img, data, slope, inter = _load_nifti(path)
    if data.ndim < 3:
        raise DataError(f"{path}: a 2D image of shape {data.shape}; a 3D volume is needed")
    geom = _geometry_from_nifti(img, data.shape)
    scaled = slope is not None and not (np.isnan(slope) or (slope == 1 and (inter is None or inter == 0)))
    if scaled:
        data = data.astype(np.float32) * np.float32(slope) + np.float32(inter or 0)
    elif dtype is not None:
        data = data.astype(dtype)
    elif not data.dtype.isnative:
        data = data.astype(data.dtype.newbyteorder("="))
    return data, geom


# ------------------------------------------------------------------------------------------- SimpleITK


def _sitk():
    try:
        import SimpleITK as sitk
    except ImportError:
        raise DataError(
            "reading .nrrd/.mha/.mhd files needs SimpleITK: pip install 'unetr[itk]' (or convert to NIfTI)"
        ) from None
    return sitk


_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def _read_itk(path: Path, dtype: Optional[np.dtype]) -> Tuple[np.ndarray, Geometry]:
    sitk = _sitk()
    if not path.exists():
        raise DataError(f"{path}: no such file")
    try:
        itk = sitk.ReadImage(str(path))
    except RuntimeError as e:
        raise DataError(f"{path}: not a readable image ({str(e).strip().splitlines()[-1]})") from None
    arr = sitk.GetArrayFromImage(itk)  # (Z, Y, X) or (Z, Y, X, C), a copy (a view dies with `itk`)
    dim = itk.GetDimension()
    ncomp = itk.GetNumberOfComponentsPerPixel()
    arr = np.asarray(arr).transpose(tuple(range(dim - 1, -1, -1)) + ((dim,) if ncomp > 1 else ()))
    if dtype is not None:
        arr = arr.astype(dtype)
    spacing = np.asarray(itk.GetSpacing(), dtype=np.float64)
    if dim == 3:
        direction = np.asarray(itk.GetDirection(), dtype=np.float64).reshape(3, 3)
        affine = np.eye(4)
        affine[:3, :3] = _LPS_TO_RAS @ direction @ np.diag(spacing)
        affine[:3, 3] = _LPS_TO_RAS @ np.asarray(itk.GetOrigin(), dtype=np.float64)
    else:
        affine = np.eye(4)
    geom = Geometry.from_affine(affine, arr.shape[:3] if arr.ndim >= 3 else (*arr.shape, 1), str(arr.dtype))
    return arr, geom


def _write_itk(path: Path, array: np.ndarray, geometry: Geometry) -> None:
    sitk = _sitk()
    itk = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)))
    spacing = np.asarray(geometry.spacing)
    direction = _LPS_TO_RAS @ geometry.affine[:3, :3] @ np.diag(1.0 / spacing)
    itk.SetSpacing(tuple(float(s) for s in spacing))
    itk.SetDirection(tuple(float(v) for v in direction.ravel()))
    itk.SetOrigin(tuple(float(v) for v in _LPS_TO_RAS @ geometry.affine[:3, 3]))
    sitk.WriteImage(itk, str(path), True)


# ------------------------------------------------------------------------------------------ public API


def _read_any(path: PathLike, dtype: Optional[np.dtype]) -> Tuple[np.ndarray, Geometry]:
    path = Path(path)
    end = file_ending(path)
    if end in ITK_ENDINGS:
        return _read_itk(path, dtype)
    if end not in NIFTI_ENDINGS:
        raise DataError(f"{path}: not a supported image file (expected one of {', '.join(IMAGE_ENDINGS)})")
    return _read_nifti(path, dtype)


def _check_finite(array: np.ndarray, path: PathLike) -> None:
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).sum())
        raise DataError(f"{path}: {bad} voxel(s) are NaN or Inf")


def _squeeze_spatial(array: np.ndarray, path: PathLike, allow_channels: bool) -> np.ndarray:
    """Accept (X, Y, Z), (X, Y, Z, 1) and, for images, (X, Y, Z, C) / (X, Y, Z, 1, C) (NIfTI 5D vectors)."""
    if array.ndim == 5 and array.shape[3] == 1:
        array = array[:, :, :, 0, :]
    if array.ndim == 4 and array.shape[3] == 1:
        array = array[..., 0]
    if array.ndim < 3 or 1 in array.shape[:3]:
        raise DataError(f"{path}: a 2D image of shape {array.shape}; a 3D volume is needed")
    if array.ndim == 4 and not allow_channels:
        raise DataError(f"{path}: expected a 3D volume here (a label map, or one file per channel), "
                        f"got shape {array.shape}")
    if array.ndim > 4:
        raise DataError(f"{path}: {array.ndim}D data of shape {array.shape}; expected 3D or 4D (channels last)")
    return array


def read_image(path_or_paths: Union[PathLike, Sequence[PathLike]]) -> Tuple[np.ndarray, Geometry]:
    """Read an image as float32 ``(C, X, Y, Z)``.

    Args:
        path_or_paths: one file (3D, or 4D with channels on the last axis as in MSD), or a list of 3D
            files, one per channel (nnU-Net's ``_0000``, ``_0001`` ...), which must share one grid.

    Returns:
        ``(array (C, X, Y, Z) float32, geometry of the first file)``.

    Raises:
        DataError: unreadable or corrupt file, 2D data, NaN/Inf voxels, channels on different grids.
    """
    paths = [path_or_paths] if isinstance(path_or_paths, (str, Path)) else list(path_or_paths)
    if not paths:
        raise DataError("read_image: no image file given")
    channels = []
    geom0: Optional[Geometry] = None
    for p in paths:
        arr, geom = _read_any(p, None)
        arr = _squeeze_spatial(arr, p, allow_channels=len(paths) == 1)
        _check_finite(arr, p)
        if geom0 is None:
            geom0 = geom
        else:
            check_same_grid(p, geom, geom0, what="channel", of=f"{Path(paths[0]).name}'s")
        if arr.ndim == 4:
            channels.extend(np.moveaxis(arr, 3, 0))
        else:
            channels.append(arr)
    # NIfTI data is Fortran-ordered: keep each channel's memory layout (a transposed view) so the float32
    # cast is one streaming pass instead of a transposing copy; callers get a (C, X, Y, Z) array either way.
    x, y, z = channels[0].shape
    out = np.empty((len(channels), z, y, x), dtype=np.float32).transpose(0, 3, 2, 1)  # (C, X, Y, Z)
    for c, ch in enumerate(channels):
        np.copyto(out[c], ch, casting="unsafe")
    assert geom0 is not None
    return out, geom0


def read_label(path: PathLike) -> Tuple[np.ndarray, Geometry]:
    """Read a label map ``(X, Y, Z)`` of non-negative integers (uint8 when the classes fit, else int32).

    Raises:
        DataError: unreadable file, not 3D, NaN/Inf, non-integer or negative values
            (:func:`unetr.labels.label_problem`).
    """
    arr, geom = _read_any(path, None)
    arr = _squeeze_spatial(arr, path, allow_channels=False)
    _check_finite(arr, path)
    check_labels(path, arr)
    fits = arr.dtype.itemsize == 1 or not arr.size or arr.max() < 256  # non-negative already
    out = arr.astype(np.uint8 if fits else np.int32, copy=False)
    if not out.flags.writeable:  # a view of the decompressed file: hand out an array the caller owns
        out = np.array(out, order="K")
    return out, geom


def read_label_for_scoring(path: PathLike) -> Tuple[np.ndarray, Tuple[float, ...], np.ndarray]:
    """``path -> (labels, spacing, affine)``: the reader that :func:`unetr.evaluation.evaluate_folders` and
    :func:`unetr.evaluation.read_pair` take (``unetr evaluate`` and ``unetr cv``; a module-level function, so
    that worker processes can unpickle it)."""
    arr, geom = read_label(path)
    return arr, geom.spacing, geom.affine


def _write(path: PathLike, array: np.ndarray, geometry: Geometry, dtype: np.dtype, intent: str) -> None:
    import nibabel as nib

    path = Path(path)
    array = np.asarray(array)
    if array.shape[:3] != tuple(geometry.shape):
        raise ValueError(f"{path}: array shape {array.shape} does not match the geometry's {geometry.shape}")
    with atomic_path(path, file_ending(path)) as tmp:
        if file_ending(path) in ITK_ENDINGS:
            _write_itk(tmp, array.astype(dtype), geometry)
        else:
            img = nib.Nifti1Image(array.astype(dtype, copy=False), geometry.affine)
            hdr = img.header
            hdr.set_data_dtype(dtype)
            hdr["xyzt_units"] = geometry.xyzt_units
            qform = geometry.qform if geometry.qform is not None else geometry.affine
            sform = geometry.sform if geometry.sform is not None else geometry.affine
            img.set_qform(qform, code=int(geometry.qform_code))
            img.set_sform(sform, code=int(geometry.sform_code))
            hdr.set_intent(intent)
            hdr.set_slope_inter(1.0, 0.0)
            nib.save(img, str(tmp))


def write_label(path: PathLike, array: np.ndarray, geometry: Geometry) -> None:
    """Write a label map ``(X, Y, Z)`` with the reference geometry (affine, qform, sform), atomically.

    The data type is uint8 when the classes fit, else int16; values must be non-negative integers.
    """
    array = np.asarray(array)
    if array.ndim != 3:
        raise ValueError(f"{path}: a label map must be (X, Y, Z), got shape {array.shape}")
    check_labels(path, array)
    hi = int(array.max()) if array.size else 0
    _write(path, array, geometry, np.dtype(np.uint8 if hi < 256 else np.int16), "label")


def write_image(path: PathLike, array: np.ndarray, geometry: Geometry, dtype: Optional[str] = None) -> None:
    """Write a volume ``(X, Y, Z)``, ``(C, X, Y, Z)`` (stored channels last) with the reference geometry.

    Args:
        dtype: on-disk type; defaults to the array's own (float64 is stored as float32).
    """
    array = np.asarray(array)
    if array.ndim == 4:
        array = np.moveaxis(array, 0, 3)  # (C, X, Y, Z) -> (X, Y, Z, C)
    elif array.ndim != 3:
        raise ValueError(f"{path}: expected (X, Y, Z) or (C, X, Y, Z), got shape {array.shape}")
    dt = np.dtype(dtype) if dtype else (np.dtype(np.float32) if array.dtype == np.float64 else array.dtype)
    if dt.kind == "b":
        dt = np.dtype(np.uint8)
    _write(path, array, geometry, dt, "none")


def read_geometry(path: PathLike) -> Tuple[Geometry, Tuple[int, ...]]:
    """The geometry and full data shape of a NIfTI file from its header alone (no voxel data read)."""
    import nibabel as nib

    path = Path(path)
    if file_ending(path) in ITK_ENDINGS:
        arr, geom = _read_itk(path, None)
        return geom, tuple(arr.shape)
    try:
        img = nib.load(str(path))
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except Exception as e:
        raise DataError(f"{path}: not a readable NIfTI image ({type(e).__name__}: {e})") from None
    shape = tuple(int(s) for s in img.shape)
    if len(shape) < 3:
        raise DataError(f"{path}: a 2D image of shape {shape}; a 3D volume is needed")
    return _geometry_from_nifti(img, shape), shape


__all__ = ["Geometry", "read_image", "read_label", "write_image", "write_label", "read_geometry", "file_ending",
           "IMAGE_ENDINGS"]
