"""The one NIfTI loader (utils/images.py): complete files open, damaged ones are one clear error."""

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bids_ketamine.errors import InputError
from bids_ketamine.utils.images import as_image, load_image, open_image


def _write(path: Path, shape=(4, 5, 6)) -> np.ndarray:
    data = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0])).to_filename(path)
    return data


@pytest.mark.parametrize("name", ["img.nii", "img.nii.gz"])
def test_complete_file_opens_with_its_data(tmp_path, name):
    data = _write(tmp_path / name)
    img = load_image(tmp_path / name)
    np.testing.assert_array_equal(np.asarray(img.dataobj), data)
    assert as_image(str(tmp_path / name), ndim=3).shape == data.shape


@pytest.mark.parametrize("name", ["img.nii", "img.nii.gz"])
def test_truncated_file_is_one_error_naming_it(tmp_path, name):
    path = tmp_path / name
    _write(path)
    path.write_bytes(path.read_bytes()[:-200])

    class MyError(InputError):
        pass

    with pytest.raises(MyError, match=f"'{path}' cannot be read as NIfTI.*truncated or corrupt"):
        open_image(path, error=MyError)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        open_image(tmp_path / "none.nii.gz")
    (tmp_path / "empty.nii.gz").write_bytes(b"")
    with pytest.raises(InputError, match=r"is empty \(0 bytes\)"):
        open_image(tmp_path / "empty.nii.gz")


def test_as_image_checks_what_the_caller_needs(tmp_path):
    _write(tmp_path / "img.nii.gz", shape=(4, 5, 6, 2))
    with pytest.raises(ValueError, match=r"moving_img must be a 3-D image, got shape \(4, 5, 6, 2\)"):
        as_image(tmp_path / "img.nii.gz", "moving_img", ndim=3)
    with pytest.raises(ValueError, match="moving_img must be a nibabel image or a path to one"):
        as_image(np.zeros((2, 2, 2)), "moving_img")
