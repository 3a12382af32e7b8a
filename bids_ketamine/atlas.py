"""Atlases: the ROI label images whose mean diffusivity is measured.

Two kinds of atlas are served, both as an :class:`Atlas` record:

- the packaged ``ketamine7`` set (the 7 ROIs of Kopelman et al. 2023), built by
  ``tools/build_ketamine7_atlas.py`` for a few template spaces; its definitions and
  provenance are in ``bids_ketamine/data/ketamine7.json``;
- a user atlas: a 3-D NIfTI label image declared to be in the template's space, with a
  BIDS-style labels table (``index``, ``name``).

Nothing is resampled here: an atlas is valid on any grid, since ROIs are mapped to the
subject through world coordinates.  Every check fails with one line that names the file
and what to do.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nibabel as nib
import numpy as np
import pandas as pd

from bids_ketamine.config import KETAMINE7_ROIS
from bids_ketamine.errors import InputError
from bids_ketamine.utils.tsv import read_tsv

if TYPE_CHECKING:  # pragma: no cover
    from bids_ketamine.resources import Template

LOGGER = logging.getLogger(__name__)

DATA_DIR = Path(__file__).parent / "data"
ATLAS_DIR = DATA_DIR / "atlases"
PACKAGED_ATLASES = ("ketamine7",)
NIFTI_SUFFIXES = (".nii.gz", ".nii")


class AtlasError(InputError, ValueError):
    """An atlas that cannot be used (unknown name, space, or invalid files)."""


@dataclass(frozen=True)
class Atlas:
    """ROI definitions in one template space.

    Attributes
    ----------
    name : str
        ``"ketamine7"`` or the user atlas's name (letters and digits of its file name),
        used in output names (``atlas-<name>``).
    space : str
        Template space label, e.g. ``"MNI152NLin2009aSym"``.
    image : Path
        NIfTI label image (integers, 0 = background) in that space.
    labels : pandas.DataFrame
        Columns ``index`` (int) and ``name`` (str), one row per ROI, sorted by index.
    provenance : dict
        What was used (files, definitions), recorded in the outputs.
    """

    name: str
    space: str
    image: Path
    labels: pd.DataFrame = field(compare=False)
    provenance: dict[str, Any] = field(compare=False, default_factory=dict)


def atlas_name_from_path(path: Path | str) -> str:
    """The atlas label of a user atlas file: the letters and digits of its name.

    ``my_rois.nii.gz`` gives ``myrois`` (the rule of ``Config.atlas_name``).
    """
    stem = Path(path).name.split(".")[0]
    return "".join(ch for ch in stem if ch.isalnum()) or "custom"


def _is_nifti_path(value: str | Path) -> bool:
    return str(value).endswith(NIFTI_SUFFIXES)


def _stem(path: Path) -> str:
    for suffix in NIFTI_SUFFIXES:
        if path.name.endswith(suffix):
            return path.name[: -len(suffix)]
    return path.stem


def packaged_spaces(atlas: str = "ketamine7") -> list[str]:
    """Template spaces in which a packaged atlas is available."""
    prefix, suffix = "tpl-", f"_res-01_atlas-{atlas}_dseg.nii.gz"
    return sorted(
        p.name[len(prefix): -len(suffix)] for p in ATLAS_DIR.glob(f"{prefix}*{suffix}")
    )


@lru_cache(maxsize=None)
def _ketamine7_definitions() -> dict[str, Any]:
    return json.loads((DATA_DIR / "ketamine7.json").read_text())


def get_atlas(atlas: str, template: "Template", labels_tsv: Path | None = None) -> Atlas:
    """Return the atlas to use in a template space.

    Parameters
    ----------
    atlas : str
        ``"ketamine7"`` (packaged), or the path of a NIfTI label image (``.nii`` or
        ``.nii.gz``) in the space of ``template``.
    template : bids_ketamine.resources.Template
        The template space of the run.
    labels_tsv : Path, optional
        Labels table of a user atlas; by default the file next to the image with the
        same stem and ``.tsv`` (``rois.nii.gz`` -> ``rois.tsv``).  Ignored for packaged
        atlases.

    Returns
    -------
    Atlas

    Raises
    ------
    AtlasError (a ValueError)
        Unknown atlas name, a packaged atlas not available in ``template.name``, an
        invalid user atlas (see :func:`load_user_atlas`), or a user atlas whose extent
        does not overlap the template's brain mask.
    """
    if atlas in PACKAGED_ATLASES:
        return _packaged_atlas(atlas, template.name)
    if _is_nifti_path(atlas):
        user = load_user_atlas(Path(atlas), labels_tsv, template.name)
        check_atlas_overlaps_mask(user, template.mask)
        return user
    raise AtlasError(
        f"unknown atlas '{atlas}': use one of {', '.join(PACKAGED_ATLASES)} or the path of "
        "a NIfTI label image (.nii/.nii.gz) in the template space with a labels TSV"
    )


def _packaged_atlas(atlas: str, space: str) -> Atlas:
    image = ATLAS_DIR / f"tpl-{space}_res-01_atlas-{atlas}_dseg.nii.gz"
    tsv = ATLAS_DIR / f"tpl-{space}_atlas-{atlas}_dseg.tsv"
    if not image.is_file() or not tsv.is_file():
        available = packaged_spaces(atlas)
        raise AtlasError(
            f"atlas '{atlas}' is not packaged for template space '{space}': use "
            f"--template with one of {', '.join(available) or 'none'}, or give your own "
            "atlas image in that space with --atlas"
        )
    labels = _read_labels_tsv(tsv)
    if atlas == "ketamine7" and tuple(labels["name"]) != KETAMINE7_ROIS:
        raise AtlasError(
            f"{tsv}: the packaged ROI names {tuple(labels['name'])} differ from "
            f"{KETAMINE7_ROIS}; rebuild with tools/build_ketamine7_atlas.py"
        )
    definitions = _ketamine7_definitions()
    space_record = definitions.get("Spaces", {}).get(space, {})
    provenance = {
        "Name": atlas,
        "Space": space,
        "Source": "packaged",
        "Image": str(image),
        "Labels": str(tsv),
        "Description": definitions.get("Description"),
        "Definitions": "bids_ketamine/data/ketamine7.json",
        "ROIs": definitions.get("ROIs"),
        "Registration": space_record.get("registration"),
        "ImageSHA256": space_record.get("files", {}).get("image_sha256"),
    }
    return Atlas(name=atlas, space=space, image=image, labels=labels, provenance=provenance)


def _read_labels_tsv(path: Path) -> pd.DataFrame:
    """Read and check a labels table (columns ``index`` and ``name``)."""
    try:
        table = read_tsv(path, error=AtlasError, dtype={"name": str},
                         hint="write a tab-separated file with columns 'index' and 'name'")
    except OSError as exc:
        raise AtlasError(
            f"{path}: cannot read the labels table ({exc}); write a tab-separated file "
            "with columns 'index' and 'name'"
        ) from None
    missing = {"index", "name"} - set(table.columns)
    if missing:
        raise AtlasError(
            f"{path}: the labels table lacks column(s) {', '.join(sorted(missing))} "
            f"(found: {', '.join(map(str, table.columns))}); write a tab-separated file "
            "with columns 'index' and 'name'"
        )
    index = pd.to_numeric(table["index"], errors="coerce")
    bad = index.isna() | (index != np.round(index)) | (index < 0)
    if bad.any():
        raise AtlasError(
            f"{path}: column 'index' must hold non-negative integers (found "
            f"{', '.join(map(str, table['index'][bad].head(5)))}); fix those rows"
        )
    names = table["name"].astype("string").str.strip()
    if names.isna().any() or (names == "").any():
        raise AtlasError(f"{path}: every row needs a 'name'; fill the empty names")
    labels = pd.DataFrame({"index": index.astype(int), "name": names.astype(str)})
    labels = labels[labels["index"] != 0]  # 0 is background, whatever it is called
    for column, what in (("index", "indices"), ("name", "names")):
        duplicated = labels[column][labels[column].duplicated()].unique()
        if len(duplicated):
            raise AtlasError(
                f"{path}: duplicated {what} {', '.join(map(str, duplicated[:5]))}; give "
                f"each ROI one row with a unique {column}"
            )
    if labels.empty:
        raise AtlasError(f"{path}: the labels table lists no ROI (index > 0); add rows")
    return labels.sort_values("index").reset_index(drop=True)


def _label_data(image: Path) -> tuple[np.ndarray, nib.Nifti1Image]:
    """Load a label image and check it is 3-D with non-negative integer values."""
    try:
        img = nib.load(image)
    except Exception as exc:  # nibabel raises several types for unreadable files
        raise AtlasError(
            f"{image}: cannot read the atlas image ({exc}); give a NIfTI (.nii/.nii.gz) "
            "label image"
        ) from None
    shape = img.shape
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise AtlasError(
            f"{image}: the atlas image has shape {img.shape}, it must be 3-D (one integer "
            "label per voxel); convert a 4-D probabilistic atlas to a label image first "
            "(e.g. maximum probability with a threshold)"
        )
    data = np.asarray(img.dataobj).reshape(shape)
    if not np.issubdtype(data.dtype, np.integer):
        if not np.all(np.isfinite(data)) or not np.array_equal(data, np.round(data)):
            raise AtlasError(
                f"{image}: the atlas holds non-integer values (dtype {data.dtype}); it "
                "must be a label image: resample it with nearest-neighbour "
                "interpolation and store integer labels"
            )
    if data.min() < 0:
        raise AtlasError(
            f"{image}: the atlas holds negative labels; use 0 for background and "
            "positive integers for ROIs"
        )
    return data.astype(np.int64), img


def load_user_atlas(image: Path, labels_tsv: Path | None, space: str) -> Atlas:
    """Load and check a user atlas declared to be in a template space.

    Parameters
    ----------
    image : Path
        NIfTI label image: 3-D, integer labels, 0 = background.
    labels_tsv : Path or None
        Tab-separated table with columns ``index`` and ``name``; None means the file
        next to ``image`` with the same stem and ``.tsv``.
    space : str
        The template space the image is declared to be in.

    Returns
    -------
    Atlas
        ``labels`` holds the rows of the table (index 0 dropped).  Labels present in the
        image but missing from the table are ignored, with a warning.

    Raises
    ------
    AtlasError (a ValueError)
        Missing files, an image that is not 3-D or holds non-integer or negative values,
        a table without ``index``/``name`` columns, duplicated indices or names, or a
        table index absent from the image.
    """
    image = Path(image)
    if not image.is_file():
        raise AtlasError(f"{image}: atlas image not found; check the --atlas path")
    if labels_tsv is None:
        labels_tsv = image.with_name(_stem(image) + ".tsv")
        if not labels_tsv.is_file():
            raise AtlasError(
                f"{image}: no labels table {labels_tsv.name} next to it; write one (columns "
                "'index' and 'name', tab-separated) or pass its path with --atlas-labels"
            )
    labels_tsv = Path(labels_tsv)
    if not labels_tsv.is_file():
        raise AtlasError(f"{labels_tsv}: labels table not found; check the --atlas-labels path")
    labels = _read_labels_tsv(labels_tsv)
    data, _ = _label_data(image)
    present = set(np.unique(data).tolist()) - {0}
    if not present:
        raise AtlasError(f"{image}: the atlas image holds no label (all zero); check the file")
    absent = [int(i) for i in labels["index"] if int(i) not in present]
    if absent:
        raise AtlasError(
            f"{labels_tsv}: label(s) {', '.join(map(str, absent[:10]))} do not occur in "
            f"{image.name}; remove those rows or use the matching image"
        )
    unlisted = sorted(present - set(labels["index"].astype(int)))
    if unlisted:
        message = (
            f"{image}: label(s) {', '.join(map(str, unlisted[:10]))}"
            f"{' ...' if len(unlisted) > 10 else ''} are not in {labels_tsv.name} and "
            "will be ignored; add them to the table to measure them"
        )
        warnings.warn(message, UserWarning, stacklevel=2)
        LOGGER.warning(message)
    name = atlas_name_from_path(image)
    provenance = {
        "Name": name,
        "Space": space,
        "Source": "user",
        "Image": str(image.resolve()),
        "Labels": str(labels_tsv.resolve()),
        "IgnoredLabels": unlisted,
    }
    return Atlas(name=name, space=space, image=image, labels=labels, provenance=provenance)


def _world_bounding_box(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World-coordinate box (min, max corners) around the non-zero voxels."""
    ijk = np.argwhere(data > 0)
    lo, hi = ijk.min(axis=0) - 0.5, ijk.max(axis=0) + 0.5
    corners = np.array([[a, b, c] for a in (lo[0], hi[0]) for b in (lo[1], hi[1])
                        for c in (lo[2], hi[2])])
    world = nib.affines.apply_affine(affine, corners)
    return world.min(axis=0), world.max(axis=0)


def check_atlas_overlaps_mask(atlas: Atlas, mask: Path) -> None:
    """Raise if the atlas's labelled extent does not overlap a template brain mask.

    A grid that differs from the template's is fine (world coordinates are what
    count); an atlas whose bounding box holds no brain voxel at all was most probably
    drawn in another space (or has a broken affine).

    Parameters
    ----------
    atlas : Atlas
    mask : Path
        The template's brain mask.

    Raises
    ------
    AtlasError (a ValueError)
    """
    data, img = _label_data(atlas.image)
    lo, hi = _world_bounding_box(data, img.affine)
    mask_img = nib.load(mask)
    brain = nib.affines.apply_affine(
        mask_img.affine, np.argwhere(np.asarray(mask_img.dataobj) > 0)
    )
    inside = np.all((brain >= lo) & (brain <= hi), axis=1)
    if not inside.any():
        raise AtlasError(
            f"{atlas.image}: its labels span x {lo[0]:.0f}..{hi[0]:.0f}, y {lo[1]:.0f}.."
            f"{hi[1]:.0f}, z {lo[2]:.0f}..{hi[2]:.0f} mm, which does not overlap the brain "
            f"mask of template {atlas.space}; the atlas is probably not in that space: "
            "resample it to the template (or pass the matching --template)"
        )


__all__ = [
    "Atlas",
    "AtlasError",
    "atlas_name_from_path",
    "check_atlas_overlaps_mask",
    "get_atlas",
    "load_user_atlas",
    "packaged_spaces",
]
