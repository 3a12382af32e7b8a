"""Loading and checking a DWI series and its gradient table.

Conventions (docs/dwi-conventions.md):

- ``.bvec`` files follow FSL/BIDS: vectors in the image's *voxel* axes, with the x component
  negated when the voxel-to-world affine has a positive determinant.  Internally we work with
  *voxel-frame* vectors (no FSL flip) of the RAS+-reoriented image, and convert back when
  writing ``.bvec`` files.
- Shells are groups of b-values closer than ``SHELL_TOLERANCE`` to each other (928.289 and
  929.75 are one shell, labelled by its median b-value); b <= ``b0_threshold`` counts as b=0.
- The tensor is fitted to b=0 and the shells at or below ``dti_max_bval``; single-shell data
  above it are fitted on their lowest shell, with a warning (:func:`dti_fit_bval`).
- :func:`check_series_files` makes every check that headers and text files allow (fast: the
  image data are not read); :func:`load_dwi_series` adds the data.

Kept as one module (~420 lines): the loading of one DWI series and every check of it share their
private error helpers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform

from bids_ketamine.errors import InputError
from bids_ketamine.utils import images

#: Tolerance on the norm of a b>0 gradient vector before it is an error.
UNIT_NORM_TOLERANCE = 0.1
#: Fewest diffusion-weighted volumes a tensor (6 unknowns besides S0) can be fitted to.
MIN_TENSOR_VOLUMES = 6
#: b-values (s/mm^2) closer than this to a neighbour belong to the same shell (MRtrix3 uses 80).
SHELL_TOLERANCE = 80.0


class DwiInputError(InputError):
    """A DWI series cannot be processed as it is."""


@dataclass
class DwiSeriesData:
    """A loaded, checked, RAS+-reoriented DWI series.

    Attributes
    ----------
    img : nibabel.Nifti1Image
        4-D image, RAS+ voxel order, float32 data.
    bvals : ndarray, shape (n,)
        b-values as written (s/mm^2), b <= b0_threshold set to 0.
    bvecs : ndarray, shape (n, 3)
        Unit gradient directions in the voxel frame of ``img`` (zeros for b=0).
    warnings : list of str
        Problems that were repaired (and must be reported), e.g. NaN voxels set to 0.
    """

    img: nib.Nifti1Image
    bvals: np.ndarray
    bvecs: np.ndarray
    warnings: list[str]


def fsl_flip(affine: np.ndarray) -> np.ndarray:
    """The sign vector that converts between FSL bvecs and voxel-frame vectors.

    FSL negates the x component for images whose affine has a positive determinant.
    """
    return np.array([-1.0, 1.0, 1.0]) if np.linalg.det(affine[:3, :3]) > 0 else np.ones(3)


def read_gradients(bval_path: Path, bvec_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read FSL-format bval/bvec files, checking their shape.

    Returns
    -------
    bvals : ndarray, shape (n,)
    bvecs : ndarray, shape (n, 3)
        As written in the file (FSL convention).
    """
    try:
        bvals = np.loadtxt(bval_path, ndmin=1).astype(float).ravel()
    except (ValueError, OSError) as err:
        raise DwiInputError(f"'{bval_path}' is not a readable list of numbers ({err}); fix the file") from None
    try:
        bvecs = np.loadtxt(bvec_path, ndmin=2).astype(float)
    except (ValueError, OSError) as err:
        raise DwiInputError(f"'{bvec_path}' is not a readable table of numbers ({err}); fix the file") from None
    if bvecs.shape[0] == 3 and bvecs.shape[1] != 3:
        bvecs = bvecs.T
    elif bvecs.shape == (3, 3):
        bvecs = bvecs.T  # FSL layout: one row per axis
    if bvecs.ndim != 2 or bvecs.shape[1] != 3:
        raise DwiInputError(
            f"'{bvec_path}' must have 3 rows (x, y, z) of one value per volume; it has shape {bvecs.shape}"
        )
    if len(bvals) != len(bvecs):
        raise DwiInputError(
            f"'{bval_path}' lists {len(bvals)} b-values but '{bvec_path}' {len(bvecs)} vectors; "
            "they must list one per volume"
        )
    return bvals, bvecs


def open_image(path: Path) -> nib.Nifti1Image:
    """Open a NIfTI image from its header, checking that the file holds all its data.

    :func:`bids_ketamine.utils.images.open_image`, raising :class:`DwiInputError`.
    """
    return images.open_image(path, error=DwiInputError)


def _decoded_data(img: nib.Nifti1Image, path: Path) -> np.ndarray:
    """The image's data as float32; corrupt compressed data become one clear error."""
    return images.decoded_data(img, path, error=DwiInputError)


def load_image(path: Path) -> nib.Nifti1Image:
    """Load a NIfTI image and its data, turning unreadable files into one clear error."""
    return images.load_image(path, error=DwiInputError)


def reorient_to_ras(img: nib.Nifti1Image, bvecs_voxel: np.ndarray) -> tuple[nib.Nifti1Image, np.ndarray]:
    """Reorient an image to RAS+ voxel order, and its voxel-frame gradients with it.

    Parameters
    ----------
    img : Nifti1Image
    bvecs_voxel : ndarray, shape (n, 3)
        Gradient directions in the voxel frame of ``img`` (no FSL flip).

    Returns
    -------
    img_ras : Nifti1Image
    bvecs_ras : ndarray, shape (n, 3)
        The same physical directions in the voxel frame of ``img_ras``.
    """
    current = io_orientation(img.affine)
    target = axcodes2ornt(("R", "A", "S"))
    transform = ornt_transform(current, target)
    img_ras = img.as_reoriented(transform)
    bvecs_ras = np.zeros_like(bvecs_voxel)
    for old_axis, (new_axis, flip) in enumerate(transform):
        bvecs_ras[:, int(new_axis)] = flip * bvecs_voxel[:, old_axis]
    return img_ras, bvecs_ras


@dataclass
class DwiSeriesFiles:
    """A DWI series checked from its header and gradient files (data not read).

    Attributes
    ----------
    img : nibabel.Nifti1Image
        The image, data not yet decoded.
    bvals : ndarray, shape (n,)
        b-values, b <= b0_threshold set to 0.
    bvecs : ndarray, shape (n, 3)
        Unit gradient directions as written in the file (FSL convention; zeros for b=0).
    """

    img: nib.Nifti1Image
    bvals: np.ndarray
    bvecs: np.ndarray


def check_series_files(
    dwi_path: Path,
    bval_path: Path | None,
    bvec_path: Path | None,
    *,
    b0_threshold: float = 50.0,
) -> DwiSeriesFiles:
    """Check one DWI series from its image header and gradient files, without reading the data.

    Checks (each failure raises :class:`DwiInputError` naming the file and the fix): the
    image holds all its data and is 4-D; bval/bvec exist and have one entry per volume; b>0
    vectors are unit length (within 10 %, then renormalised); there is at least one b=0 volume.
    """
    dwi_path = Path(dwi_path)
    if bval_path is None or not Path(bval_path).exists() or bvec_path is None or not Path(bvec_path).exists():
        stem = dwi_path.name.split(".")[0]
        raise DwiInputError(
            f"'{dwi_path}' has no {stem}.bval/{stem}.bvec beside it (nor a dwi.bval/dwi.bvec "
            "inherited from a folder above): add the gradient files (dcm2niix writes them)"
        )
    img = open_image(dwi_path)
    if img.ndim != 4:
        raise DwiInputError(
            f"'{dwi_path}' is {img.ndim}-D but a DWI series must be 4-D (one volume per gradient); "
            "if it is not diffusion data, rename it or exclude it with --bids-filter-file"
        )
    bvals, bvecs = read_gradients(Path(bval_path), Path(bvec_path))
    n_volumes = img.shape[3]
    if len(bvals) != n_volumes:
        raise DwiInputError(
            f"'{dwi_path}' has {n_volumes} volumes but '{bval_path}' lists {len(bvals)} b-values; "
            "the gradient files must describe every volume (re-export with dcm2niix)"
        )
    bvals = np.where(bvals <= b0_threshold, 0.0, bvals)
    diffusion = bvals > 0
    if not np.any(~diffusion):
        raise DwiInputError(
            f"'{dwi_path}' has no b=0 volume (lowest b-value {bvals.min():g} > --b0-threshold "
            f"{b0_threshold:g}); the tensor fit needs one: raise --b0-threshold if the lowest shell is b=0-like"
        )
    norms = np.linalg.norm(bvecs, axis=1)
    bad = diffusion & (np.abs(norms - 1.0) > UNIT_NORM_TOLERANCE)
    if np.any(bad):
        first = int(np.flatnonzero(bad)[0])
        raise DwiInputError(
            f"'{bvec_path}' has {int(bad.sum())} zero or non-unit vector(s) for b>0 volumes "
            f"(first: volume {first}, norm {norms[first]:.3f}); fix the file (every b>0 vector must "
            "have length 1)"
        )
    bvecs = np.where(diffusion[:, None], bvecs / np.where(norms > 0, norms, 1.0)[:, None], 0.0)
    return DwiSeriesFiles(img=img, bvals=bvals, bvecs=bvecs)


def load_dwi_series(
    dwi_path: Path,
    bval_path: Path | None,
    bvec_path: Path | None,
    *,
    b0_threshold: float = 50.0,
) -> DwiSeriesData:
    """Load and check one DWI series; return it RAS+-oriented with voxel-frame gradients.

    The checks of :func:`check_series_files`, then the data are read: non-finite voxels are
    set to 0 and reported in ``warnings``.
    """
    dwi_path = Path(dwi_path)
    checked = check_series_files(dwi_path, bval_path, bvec_path, b0_threshold=b0_threshold)
    img, bvals, bvecs = checked.img, checked.bvals, checked.bvecs
    data = _decoded_data(img, dwi_path)
    warnings: list[str] = []
    finite = np.isfinite(data)
    if not finite.all():
        n_bad = int((~finite.all(axis=3)).sum())
        data = np.where(finite, data, 0.0).astype(np.float32)
        warnings.append(f"{n_bad} voxel(s) with NaN or Inf values in '{dwi_path.name}' were set to 0 "
                        "and left out of the brain mask")
    header = img.header.copy()
    header.set_data_dtype(np.float32)
    clean = nib.Nifti1Image(data, img.affine, header)
    clean.header.set_xyzt_units("mm", "sec")
    vox_bvecs = bvecs * fsl_flip(img.affine)
    img_ras, bvecs_ras = reorient_to_ras(clean, vox_bvecs)
    return DwiSeriesData(img=img_ras, bvals=bvals, bvecs=bvecs_ras, warnings=warnings)


def shell_labels(bvals: np.ndarray, b0_threshold: float = 50.0,
                 tolerance: float = SHELL_TOLERANCE) -> np.ndarray:
    """The shell of every volume: b=0, or the median b-value of its group.

    b-values at or below ``b0_threshold`` are b=0 (1.25 is b=0); the others are sorted and
    split where two neighbours differ by more than ``tolerance`` (928.289 and 929.75 are one
    shell; 995, 1000, 1005 are 1000).

    Parameters
    ----------
    bvals : array-like, shape (n,)
    b0_threshold, tolerance : float
        s/mm^2.

    Returns
    -------
    ndarray, shape (n,)
        Shell b-value of each volume (rounded to 1 s/mm^2).
    """
    bvals = np.asarray(bvals, dtype=float).ravel()
    if not np.all(np.isfinite(bvals)):
        raise ValueError("b-values must be finite numbers")
    labels = np.zeros_like(bvals)
    diffusion = np.flatnonzero(bvals > b0_threshold)
    if diffusion.size == 0:
        return labels
    order = diffusion[np.argsort(bvals[diffusion], kind="stable")]
    groups = np.split(order, np.flatnonzero(np.diff(bvals[order]) > tolerance) + 1)
    for members in groups:
        labels[members] = np.round(np.median(bvals[members]))
    return labels


def shells(bvals: np.ndarray, b0_threshold: float = 50.0) -> dict[float, int]:
    """Number of volumes per shell (:func:`shell_labels`), b=0 included."""
    values, counts = np.unique(shell_labels(bvals, b0_threshold), return_counts=True)
    return {float(v): int(c) for v, c in zip(values, counts)}


def same_shells(first: dict[float, int], second: dict[float, int],
                tolerance: float = SHELL_TOLERANCE) -> bool:
    """Whether two :func:`shells` tables describe the same scheme: the same number of volumes
    per shell, at b-values within ``tolerance`` (928 and 930 are the same shell)."""
    if len(first) != len(second):
        return False
    return all(abs(b1 - b2) <= tolerance and n1 == n2
               for (b1, n1), (b2, n2) in zip(sorted(first.items()), sorted(second.items())))


def dti_volumes(bvals: np.ndarray, dti_max_bval: float = 1500.0) -> np.ndarray:
    """Indices of the volumes the tensor is fitted to: b=0 and shells <= ``dti_max_bval``."""
    labels = shell_labels(bvals)
    selected = np.flatnonzero(labels <= dti_max_bval)
    if not np.any(labels[selected] > 0):
        lowest = float(labels[labels > 0].min()) if np.any(labels > 0) else 0.0
        raise DwiInputError(
            f"no diffusion-weighted shell at or below --dti-max-bval {dti_max_bval:g} "
            f"(lowest shell b={lowest:g}); raise --dti-max-bval"
        )
    return selected


def mean_fit_bval(bvals: np.ndarray, fit_bval: float, b0_threshold: float = 50.0) -> float:
    """Mean b-value (s/mm^2) of the diffusion-weighted volumes the tensor is fitted to.

    The b-value at which ``pv_gm``'s tissue signals are mixed
    (:func:`bids_ketamine.dwi.partial_volume.grey_matter_md`): exact for one shell, the mean
    of the shells' volumes for several.
    """
    bvals = np.asarray(bvals, dtype=float)
    labels = shell_labels(bvals, b0_threshold)
    fitted = (labels > 0) & (labels <= fit_bval)
    if not fitted.any():
        raise ValueError(f"no diffusion-weighted volume at or below b = {fit_bval:g}")
    return float(bvals[fitted].mean())


def dti_fit_bval(bvals: np.ndarray, dti_max_bval: float, source: Path | str = "the series",
                 b0_threshold: float = 50.0) -> tuple[float, str | None]:
    """The highest b-value the tensor of a series is fitted to, decided from its b-values.

    With a shell at or below ``dti_max_bval``: ``dti_max_bval``, no warning (multi-shell data
    keep the option).  Without (single-shell b=2000, 2500, 3000 data): the lowest non-zero
    shell, and a warning for the sidecar and the report, as other DTI tools do.

    Parameters
    ----------
    bvals : array-like
        The series' b-values.
    dti_max_bval : float
        ``--dti-max-bval``.
    source : Path or str
        The .bval file, named in the messages.
    b0_threshold : float

    Returns
    -------
    fit_bval : float
    warning : str or None

    Raises
    ------
    DwiInputError
        The series has no diffusion-weighted volume, or fewer than ``MIN_TENSOR_VOLUMES`` in
        the fitted shells.
    """
    labels = shell_labels(bvals, b0_threshold)
    weighted = np.unique(labels[labels > 0])
    if weighted.size == 0:
        raise DwiInputError(
            f"'{source}' lists no diffusion-weighted volume (every b <= --b0-threshold {b0_threshold:g}); "
            "a tensor needs b>0 volumes: check the file or exclude the series with --bids-filter-file"
        )
    fit_bval = float(dti_max_bval) if weighted.min() <= dti_max_bval else float(weighted.min())
    n_fitted = int(np.sum((labels > 0) & (labels <= fit_bval)))
    if n_fitted < MIN_TENSOR_VOLUMES:
        raise DwiInputError(
            f"'{source}' lists {n_fitted} diffusion-weighted volume(s) at b <= {fit_bval:g}; a tensor needs "
            f"at least {MIN_TENSOR_VOLUMES}: exclude the series with --bids-filter-file (a reverse "
            "phase-encoding reference is recognised by its dir- entity and set aside)"
        )
    if fit_bval == dti_max_bval:
        return fit_bval, None
    lowest = fit_bval
    return lowest, (
        f"no shell at or below --dti-max-bval {dti_max_bval:g} in '{Path(source).name}' (shells b="
        f"{', '.join(f'{b:g}' for b in weighted)}): the tensor was fitted to b=0 and the lowest shell, "
        f"b={lowest:g}; at high b the signal is not mono-exponential, so MD, AD and RD are lower than "
        f"at b~1000 and comparable only with data of the same b-value"
    )


def write_fsl_gradients(bvals: np.ndarray, bvecs_voxel: np.ndarray, affine: np.ndarray,
                        bval_path: Path, bvec_path: Path) -> None:
    """Write voxel-frame gradients as FSL/BIDS ``.bval``/``.bvec`` files for ``affine``."""
    from bids_ketamine.utils.atomic import atomic_write_text

    fsl = np.asarray(bvecs_voxel, dtype=float) * fsl_flip(affine)
    atomic_write_text(bval_path, " ".join(f"{b:g}" for b in bvals) + "\n")
    atomic_write_text(bvec_path, "\n".join(" ".join(f"{v:.6f}" for v in row) for row in fsl.T) + "\n")
