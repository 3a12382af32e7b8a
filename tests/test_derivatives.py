"""The derivatives contract (bids_ketamine/derivatives.py): names built and parsed back."""

from pathlib import Path

import pytest

from bids_ketamine import derivatives
from bids_ketamine.bids import DwiSeries
from bids_ketamine.workflows.outputs import output_path

NAMES = {"tpl": "MNI152NLin2009cAsym", "atlas": "ketamine7", "denoise": "mppca"}


@pytest.mark.parametrize("entities, folder, prefix", [
    ({}, "sub-01/ses-pre/dwi", "sub-01_ses-pre"),
    ({"acquisition": "tilted", "run": "02"}, "sub-01/ses-pre/dwi", "sub-01_ses-pre_acq-tilted_run-02"),
])
def test_contract_names(entities, folder, prefix):
    """The names of docs/interfaces.md, written out by hand."""
    series = DwiSeries(subject="01", session="pre", dwi=Path("x"), bval=None, bvec=None,
                       entities=entities)
    expected = {
        "mask_file": "space-dwi_desc-brain_mask.nii.gz",
        "md_file": "space-dwi_model-tensor_param-md_dwimap.nii.gz",
        "tpl_fa_file": "space-MNI152NLin2009cAsym_model-tensor_param-fa_dwimap.nii.gz",
        "model_metadata": "space-dwi_model-tensor_dwimap.json",
        "noise_file": "space-dwi_model-mppca_param-noise_dwimap.nii.gz",
        "midpoint_xfm": "from-dwi_to-midpoint_mode-image_xfm.txt",
        "dseg_file": "space-dwi_atlas-ketamine7_dseg.nii.gz",
        "roistats_file": "atlas-ketamine7_model-tensor_roistats.tsv",
        "preproc_metadata": "space-dwi_desc-preproc_dwi.json",
    }
    for field_name, rest in expected.items():
        assert output_path(Path("/out"), series, field_name, **NAMES) == \
            Path("/out") / folder / f"{prefix}_{rest}"
    assert series.prefix == prefix


def test_every_output_parses_back_to_its_field(tmp_path):
    series = {"subject": "01", "session": "post", "acquisition": "ortho", "run": "1"}
    fields = list(derivatives.SERIES_OUTPUTS) + list(derivatives.SERIES_SIDECARS)
    for field_name in fields:
        path = derivatives.series_path(tmp_path, series, field_name, **NAMES)
        found = derivatives.parse_entities(tmp_path, path)
        assert derivatives.classify(found) == (field_name, {
            key: NAMES[key] for key in ("tpl", "atlas", "denoise")
            if "{" + key + "}" in str({**derivatives.SERIES_OUTPUTS,
                                      **derivatives.SERIES_SIDECARS}[field_name])})
        assert derivatives.series_prefix(found) == "sub-01_ses-post_acq-ortho_run-1"
    midpoint = derivatives.subject_path(tmp_path, "01", "midpoint_b0")
    assert midpoint == tmp_path / "sub-01/dwi/sub-01_space-midpoint_desc-b0_dwiref.nii.gz"
    assert derivatives.classify(derivatives.parse_entities(tmp_path, midpoint)) == ("midpoint_b0", {})


def test_foreign_files_are_not_outputs(tmp_path):
    for name in ("sub-01/ses-pre/dwi/sub-01_ses-pre_dwi.nii.gz",
                 "sub-01/ses-pre/dwi/sub-01_ses-pre_space-midpoint_model-tensor_param-fa_dwimap.nii.gz",
                 "sub-01/ses-pre/dwi/sub-01_ses-pre_space-dwi_desc-other_dwi.nii.gz"):
        assert derivatives.classify(derivatives.parse_entities(tmp_path, tmp_path / name)) is None


def test_roi_tables_start_with_the_contract_columns():
    import numpy as np
    import pandas as pd

    from bids_ketamine.dwi.roi import roi_statistics

    labels = np.zeros((4, 4, 4), dtype=int)
    labels[1:3, 1:3, 1:3] = 1
    maps = {p: np.full(labels.shape, 0.5) for p in derivatives.TENSOR_PARAMS}
    table = roi_statistics(maps, labels, pd.DataFrame({"index": [1], "name": ["A"]}),
                           np.ones(labels.shape, bool), coverage={"A": 1.0})
    assert tuple(table.columns[:len(derivatives.ROISTATS_COLUMNS)]) == derivatives.ROISTATS_COLUMNS
    assert set(table["param"]) == set(derivatives.TENSOR_PARAMS)
    assert table["n_voxels"].tolist() == [8] * 4 and table["mean"].tolist() == [0.5] * 4


def test_sink_compresses_an_uncompressed_work_image(tmp_path):
    """A work-folder series (``.nii``) reaches its ``.nii.gz`` derivative name as gzip, with the
    same header and voxels; a file already of the target's kind is copied byte for byte."""
    import gzip

    import nibabel as nib
    import numpy as np

    from bids_ketamine.interfaces import series_file
    from bids_ketamine.interfaces.io import DerivativesSink

    data = np.random.default_rng(0).normal(size=(5, 6, 4, 3)).astype(np.float32)
    affine = np.diag([2.0, 2.0, 2.5, 1.0])
    work = Path(series_file(tmp_path, "dwi_mc"))
    assert work.name == "dwi_mc.nii"
    nib.Nifti1Image(data, affine).to_filename(work)
    target = tmp_path / "out" / "sub-01_space-dwi_desc-preproc_dwi.nii.gz"
    DerivativesSink(in_file=str(work), out_path=str(target)).run()
    with gzip.open(target) as stream:
        stream.read(1)  # raises if the file is not gzip
    written = nib.load(target)
    np.testing.assert_array_equal(written.get_fdata(dtype=np.float32), data)
    np.testing.assert_array_equal(written.affine, affine)
    copied = tmp_path / "out" / "copy.nii"
    DerivativesSink(in_file=str(work), out_path=str(copied)).run()
    assert copied.read_bytes() == work.read_bytes()
