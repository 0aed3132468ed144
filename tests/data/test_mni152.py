"""The real brain-MRI example built from nilearn's MNI152 template."""

import numpy as np
import pytest

pytest.importorskip("nilearn")

from unetr.data.io import read_image, read_label  # noqa: E402
from unetr.data.mni152 import CLASS_NAMES, load_template, make_brain_dataset  # noqa: E402


def test_template_tissue_labels_are_plausible():
    t1, labels, affine = load_template(spacing=4.0)
    assert t1.shape == labels.shape and t1.dtype == np.float32
    np.testing.assert_allclose(np.abs(np.diag(affine)[:3]), [4.0, 4.0, 4.0])
    counts = np.bincount(labels.ravel(), minlength=4)
    assert len(counts) == len(CLASS_NAMES) == 4 and (counts > 0).all()
    # brain tissue: white matter is brighter than grey matter, CSF darkest on T1
    means = [t1[labels == k].mean() for k in (1, 2, 3)]
    assert means[0] < means[1] < means[2]
    # grey and white matter together ~1.5 litres in the (enlarged) MNI template
    litres = (counts[2] + counts[3]) * 4.0**3 / 1e6
    assert 1.0 < litres < 1.8


def test_dataset_is_deterministic_and_overlays(tmp_path):
    a = make_brain_dataset(tmp_path / "a", cases=1, test_cases=1, seed=3, spacing=4.0)
    b = make_brain_dataset(tmp_path / "b", cases=1, test_cases=1, seed=3, spacing=4.0)
    img_a, geom_a = read_image(a / "imagesTr" / "mni_000_0000.nii.gz")
    img_b, _ = read_image(b / "imagesTr" / "mni_000_0000.nii.gz")
    lab, geom_l = read_label(a / "labelsTs" / "mni_001.nii.gz")
    np.testing.assert_array_equal(img_a, img_b)
    assert geom_a.same_grid(geom_l)
    assert set(np.unique(lab)) == {0, 1, 2, 3}
    other, _ = read_image(a / "imagesTs" / "mni_001_0000.nii.gz")
    assert not np.array_equal(img_a, other)  # each case has its own transform


def test_bad_arguments():
    with pytest.raises(ValueError, match="cases"):
        make_brain_dataset("/nonexistent", cases=0)
