"""Opening NIfTI images: the one loader of the package.

Every stage opens images through :func:`open_image` (a path, header only, checked to hold all
its data) or :func:`as_image` (a path or an image already in memory, checked for what the
caller needs); :func:`decoded_data` decodes the data and turns corrupt compressed data into
the same one-line error.  Errors are :class:`~bids_ketamine.errors.InputError` unless the
caller names its own subclass (the DWI loader raises ``DwiInputError``).
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

from bids_ketamine.errors import InputError

__all__ = ["as_image", "decoded_data", "load_image", "open_image"]

#: What nibabel raises on a truncated or corrupt file.
_READ_ERRORS = (EOFError, OSError, gzip.BadGzipFile, zlib.error, ValueError)


def open_image(path: Path, *, error: type[Exception] = InputError) -> nib.Nifti1Image:
    """Open a NIfTI image from its header, checking that the file holds all its data.

    Fast: the data are not decoded.  For ``.nii.gz`` the uncompressed size recorded in the
    gzip trailer is compared with the header's; only when they differ (a truncated file, or
    a multi-member gzip) is the file decompressed to count its bytes.

    Parameters
    ----------
    path : path
    error : exception class
        Raised (with a one-line message naming the file and the fix) when the file is
        missing, empty, truncated or not NIfTI.
    """
    path = Path(path)
    if not path.exists():
        raise error(f"'{path}' does not exist")
    if path.stat().st_size == 0:
        raise error(f"'{path}' is empty (0 bytes): re-export or re-copy the image")
    try:
        img = nib.load(str(path))
        expected = int(img.dataobj.offset) + int(np.prod(img.shape)) * img.get_data_dtype().itemsize
        size = _uncompressed_size(path, expected)
    except (*_READ_ERRORS, nib.filebasedimages.ImageFileError) as err:
        raise _unreadable(path, err, error) from None
    if size < expected:
        raise _unreadable(path, EOFError(f"{size} of {expected} bytes"), error)
    return img


def _uncompressed_size(path: Path, expected: int) -> int:
    """Bytes of ``path`` once decompressed (the gzip trailer first, counting only if needed)."""
    if not path.name.endswith(".gz"):
        return path.stat().st_size
    with open(path, "rb") as handle:
        handle.seek(-4, 2)
        if int.from_bytes(handle.read(4), "little") == expected % 2**32:
            return expected
    total = 0
    with gzip.open(path, "rb") as stream:
        while chunk := stream.read(1 << 24):
            total += len(chunk)
    return total


def _unreadable(path: Path, err: Exception, error: type[Exception]) -> Exception:
    return error(
        f"'{path}' cannot be read as NIfTI ({type(err).__name__}: {err}); the file is probably "
        "truncated or corrupt: re-export or re-copy it"
    )


def decoded_data(img: nib.Nifti1Image, path: Path, *,
                 error: type[Exception] = InputError) -> np.ndarray:
    """The image's data as float32; corrupt compressed data become one clear error."""
    try:
        return img.get_fdata(dtype=np.float32)
    except _READ_ERRORS as err:
        raise _unreadable(Path(path), err, error) from None


def load_image(path: Path, *, error: type[Exception] = InputError) -> nib.Nifti1Image:
    """Load a NIfTI image and its data, turning unreadable files into one clear error."""
    img = open_image(path, error=error)
    decoded_data(img, path, error=error)  # decode now: catches corrupt compressed data
    return img


def as_image(img, name: str = "image", *, ndim: int | None = None,
             require_data: bool = False) -> nib.Nifti1Image:
    """A nibabel image from an image or a path to one (opened with :func:`open_image`).

    Parameters
    ----------
    img : path or nibabel image
    name : str
        How the caller's argument is named in error messages.
    ndim : int, optional
        Required number of dimensions (``ValueError`` otherwise).
    require_data : bool
        Also require a ``dataobj`` (a spatial image, not only an affine).
    """
    if isinstance(img, (str, Path)):
        img = open_image(img)
    if not hasattr(img, "affine") or (require_data and not hasattr(img, "dataobj")):
        raise ValueError(f"{name} must be a nibabel image or a path to one")
    if ndim is not None and len(img.shape) != ndim:
        raise ValueError(f"{name} must be a {ndim}-D image, got shape {img.shape}")
    return img
