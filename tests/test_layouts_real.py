"""A real layout of ../shared/data/bids-layouts processed end to end (issue 14; slow).

genetics_ukbb (UK Biobank style: no sessions, dwi.bval/dwi.bvec/dwi.json only at the dataset
root) is copied under a folder named ``perf``, and sub-01's 0-byte placeholder is replaced by
real scanner data with the layout's 65 volumes.  No real image of ../shared/data has 65
volumes, so the image is made from ../shared/data/real-dwi/sub-elition (2 mm, b=1000, 16
directions), block-averaged to 4 mm to keep the test short: its tensor, fitted voxel by voxel,
predicts the signal along the layout's own 64 directions (the real anatomy and diffusivities,
the layout's real gradient table).  The other 13 placeholders stay 0 bytes: the preflight
reports each in seconds and the run processes sub-01.
"""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest
from conftest import REAL_DWI, SHARED

from bids_ketamine.cli.run import main

pytestmark = [pytest.mark.slow, pytest.mark.realdata, pytest.mark.timeout(1800)]

LAYOUT = SHARED / "data" / "bids-layouts" / "genetics_ukbb"
ELITION = REAL_DWI / "sub-elition" / "ses-1" / "dwi" / "sub-elition_ses-1_dwi"


def _block_average(img: nib.Nifti1Image, factor: int = 2) -> nib.Nifti1Image:
    data = img.get_fdata(dtype=np.float32)
    shape = [n // factor * factor for n in data.shape[:3]]
    data = data[: shape[0], : shape[1], : shape[2]]
    data = data.reshape(shape[0] // factor, factor, shape[1] // factor, factor, shape[2] // factor, factor,
                        data.shape[3]).mean(axis=(1, 3, 5))
    affine = img.affine @ np.diag([factor, factor, factor, 1.0])
    affine[:3, 3] = img.affine[:3, :3] @ np.full(3, (factor - 1) / 2) + img.affine[:3, 3]
    return nib.Nifti1Image(data.astype(np.float32), affine)


def _tensor_fit(img, bvals, bvecs):
    """dipy WLS tensor of every voxel and the median-Otsu brain mask of the mean b=0."""
    from dipy.core.gradients import gradient_table
    from dipy.reconst.dti import TensorModel
    from dipy.segment.mask import median_otsu

    data = img.get_fdata(dtype=np.float32)
    _, mask = median_otsu(data[..., bvals < 50].mean(axis=-1), median_radius=2, numpass=1)
    fit = TensorModel(gradient_table(bvals, bvecs=bvecs.T), fit_method="WLS").fit(data, mask=mask)
    return fit, mask


@pytest.fixture(scope="module")
def ukbb_with_real_image(tmp_path_factory):
    if not (LAYOUT / "dataset_description.json").exists() or not ELITION.with_suffix(".bval").exists():
        pytest.skip(f"real layouts or real DWI not found under {SHARED / 'data'} (the shared/ folder beside the repo)")
    root = tmp_path_factory.mktemp("layout") / "perf" / "genetics_ukbb"
    shutil.copytree(LAYOUT, root)
    for path in [root, *root.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    real = _block_average(nib.load(f"{ELITION}.nii.gz"))
    real_bvals, real_bvecs = np.loadtxt(f"{ELITION}.bval"), np.loadtxt(f"{ELITION}.bvec")
    fit, mask = _tensor_fit(real, real_bvals, real_bvecs)
    from dipy.core.gradients import gradient_table

    bvals, bvecs = np.loadtxt(root / "dwi.bval"), np.loadtxt(root / "dwi.bvec")
    s0 = real.get_fdata()[..., real_bvals < 50].mean(axis=-1)
    signal = fit.predict(gradient_table(bvals, bvecs=bvecs.T), S0=s0)
    signal = np.where(mask[..., None], np.nan_to_num(signal), real.get_fdata()[..., :1])
    nib.Nifti1Image(signal.astype(np.float32), real.affine).to_filename(root / "sub-01" / "dwi" / "sub-01_dwi.nii.gz")
    expected_md = float(np.median(fit.md[mask]) * 1e3)
    return root, expected_md


def test_real_layout_with_inheritance_end_to_end(ukbb_with_real_image, tmp_path, capsys):
    root, expected_md = ukbb_with_real_image
    out_dir = tmp_path / "out"
    with pytest.raises(SystemExit) as done:
        main([str(root), str(out_dir), "participant", "-w", str(tmp_path / "work"), "--nprocs", "2",
              "--omp-nthreads", "1", "--skip-bids-validation"])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("bids-ketamine: error:")]
    # the 13 placeholders are reported, each by name, and do not stop sub-01
    assert done.value.code == 1 and len(errors) == 13, errors
    for subject in range(2, 15):
        assert any(f"sub-{subject:02d}_dwi.nii.gz' is empty (0 bytes)" in line for line in errors)
    folder = out_dir / "sub-01" / "dwi"
    table = folder / "sub-01_atlas-ketamine7_model-tensor_roistats.tsv"
    assert table.exists(), sorted(p.name for p in folder.glob("*"))
    sidecar = json.loads((folder / "sub-01_space-dwi_desc-preproc_dwi.json").read_text())
    assert sidecar["NumberOfVolumes"] == 65 and sidecar["Shells"] == {"0": 1, "1000": 64}
    md = nib.load(folder / "sub-01_space-dwi_model-tensor_param-md_dwimap.nii.gz").get_fdata()
    mask = nib.load(folder / "sub-01_space-dwi_desc-brain_mask.nii.gz").get_fdata() > 0
    measured = float(np.median(md[mask]))
    print(f"median MD {measured:.3f} um^2/ms; dipy on the real 17 volumes {expected_md:.3f}")
    assert measured == pytest.approx(expected_md, rel=0.05)
