"""The simulator's susceptibility distortion (issue 19): the EPI forward model against closed
forms, and ``--distortion``/``--reverse-pe`` changing nothing but what they add."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from bids_ketamine.simulate.distortion import Distortion, distort, susceptibility_field


def _line_image():
    image = np.zeros((6, 48, 4))
    image[:, 12:36, :] = 2.0 + np.sin(np.arange(24) / 3.0)[None, :, None]
    return image


def test_constant_field_shifts_by_field_times_readout_time():
    image = _line_image()
    # 100 Hz x 0.03 s = 3 voxels along j; the polarity decides the direction
    forward = distort(image, np.full(image.shape, 100.0), Distortion(100.0, 0.03, axis=1, sign=1))
    backward = distort(image, np.full(image.shape, 100.0), Distortion(100.0, 0.03, axis=1, sign=-1))
    np.testing.assert_allclose(forward[:, 15:39], image[:, 12:36], atol=1e-12)
    np.testing.assert_allclose(backward[:, 9:33], image[:, 12:36], atol=1e-12)


def test_linear_field_stretches_and_keeps_the_signal():
    """d(x) = a x: the line is stretched by 1 + a and dimmed by 1 / (1 + a); its sum is kept."""
    image = _line_image()
    slope = 0.2  # voxels of displacement per voxel
    field = np.broadcast_to((np.arange(48.0) * slope / 0.05)[None, :, None], image.shape)
    out = distort(image, field, Distortion(1.0, 0.05, axis=1, sign=1))
    np.testing.assert_allclose(out.sum(axis=1), image.sum(axis=1), rtol=0.01)
    y = np.arange(48.0)
    expected = np.interp(y / (1 + slope), y, image[0, :, 0]) / (1 + slope)
    np.testing.assert_allclose(out[0, 5:40, 0], expected[5:40], atol=0.02)


def test_folding_field_is_refused():
    image = _line_image()
    field = np.broadcast_to((np.arange(48.0) * -30.0)[None, :, None], image.shape)  # d' = -1.5
    with pytest.raises(ValueError, match="folds the image"):
        distort(image, field, Distortion(1.0, 0.05, axis=1, sign=1))


def test_field_peaks_at_the_sources():
    assert susceptibility_field(np.array([0.0, 64.0, -20.0]), 100.0) == pytest.approx(100.0, abs=0.1)
    assert susceptibility_field(np.array([0.0, -40.0, 40.0]), 100.0) < 1e-6  # parietal: none


def _digests(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_distortion_options_change_only_what_they_add(tmp_path):
    import json

    import nibabel as nib

    from bids_ketamine.simulate import simulate_trial
    from bids_ketamine.simulate.study import truth_map_paths

    plain = _digests(simulate_trial(tmp_path / "plain", n_subjects=1, seed=3, preset="demo", progress=False))
    root = simulate_trial(tmp_path / "distorted", n_subjects=1, seed=3, preset="demo", progress=False,
                          distortion_hz=60.0, reverse_pe=True)
    distorted = _digests(root)
    changed = sorted(name for name in plain if distorted[name] != plain[name])
    assert changed == ["sub-01/ses-post/dwi/sub-01_ses-post_dwi.nii.gz",
                       "sub-01/ses-pre/dwi/sub-01_ses-pre_dwi.nii.gz"]
    added = sorted(set(distorted) - set(plain))
    assert len(added) == 6  # per session: the field's truth, the epi image and its sidecar
    sidecar = json.loads((root / "sub-01" / "ses-pre" / "fmap" / "sub-01_ses-pre_dir-PA_epi.json").read_text())
    dwi_sidecar = json.loads((root / "sub-01" / "ses-pre" / "dwi" / "sub-01_ses-pre_dwi.json").read_text())
    assert (dwi_sidecar["PhaseEncodingDirection"], sidecar["PhaseEncodingDirection"]) == ("j-", "j")
    assert sidecar["IntendedFor"] == ["ses-pre/dwi/sub-01_ses-pre_dwi.nii.gz"]
    assert sidecar["TotalReadoutTime"] == dwi_sidecar["TotalReadoutTime"]
    n_b0 = int((np.loadtxt(root / "sub-01" / "ses-pre" / "dwi" / "sub-01_ses-pre_dwi.bval") <= 50).sum())
    assert nib.load(root / "sub-01" / "ses-pre" / "fmap" / "sub-01_ses-pre_dir-PA_epi.nii.gz").shape[3] == n_b0
    field = nib.load(truth_map_paths(root, "01", "pre")["fieldmap"]).get_fdata()
    assert 20.0 < field.max() <= 60.0
    # the field follows the head: the two sessions' heads are placed differently
    field_post = nib.load(truth_map_paths(root, "01", "post")["fieldmap"]).get_fdata()
    assert np.abs(field - field_post).max() > 1.0


@pytest.mark.slow
def test_pepolar_field_recovers_the_simulated_field(tmp_path):
    """PEPOLAR (dwi/sdc.py): the field from the DWI's b=0 and the reverse phase-encoded b=0
    against the simulator's true field, inside the true brain.  Measured (seed 5, 3 mm, 100 Hz
    peak, up to 4.6 voxels): r 0.78, median displacement error 0.014 voxel over the brain,
    0.99 voxel where the true displacement exceeds 1 voxel (3 % of the brain, next to the
    sources: SyN's regularisation smooths the steepest part of the field)."""
    import json

    import nibabel as nib

    pytest.importorskip("ants", reason="ANTsPy (pip install antspyx) is not installed")
    from bids_ketamine.dwi.sdc import pepolar_field
    from bids_ketamine.simulate import simulate_trial
    from bids_ketamine.simulate.study import truth_map_paths

    root = simulate_trial(tmp_path / "bids", n_subjects=1, seed=5, preset="small", progress=False,
                          distortion_hz=100.0, reverse_pe=True)
    dwi_dir = root / "sub-01" / "ses-pre" / "dwi"
    dwi = nib.load(dwi_dir / "sub-01_ses-pre_dwi.nii.gz")
    b0s = np.asanyarray(dwi.dataobj)[..., np.loadtxt(dwi_dir / "sub-01_ses-pre_dwi.bval") <= 50]
    reverse = nib.load(root / "sub-01" / "ses-pre" / "fmap" / "sub-01_ses-pre_dir-PA_epi.nii.gz")
    readout = json.loads((dwi_dir / "sub-01_ses-pre_dwi.json").read_text())["TotalReadoutTime"]
    truth_paths = truth_map_paths(root, "01", "pre")
    brain = sum(nib.load(truth_paths[t]).get_fdata() for t in ("gm", "wm", "csf")) > 0.5
    field = pepolar_field(nib.Nifti1Image(b0s.mean(-1).astype(np.float32), dwi.affine),
                          nib.Nifti1Image(np.asanyarray(reverse.dataobj).mean(-1).astype(np.float32),
                                          reverse.affine),
                          axis=1, sign=-1, total_readout_time=readout,
                          mask=nib.Nifti1Image(brain.astype(np.uint8), dwi.affine)).get_fdata()
    true_field = nib.load(truth_paths["fieldmap"]).get_fdata()
    error_voxels = np.abs(field - true_field)[brain] * readout
    large = true_field[brain] * readout > 1.0
    print(f"r {np.corrcoef(field[brain], true_field[brain])[0, 1]:.3f}; median displacement error "
          f"{np.median(error_voxels):.3f} voxel, {np.median(error_voxels[large]):.2f} where |d| > 1")
    assert np.corrcoef(field[brain], true_field[brain])[0, 1] > 0.7
    assert np.median(error_voxels) <= 0.5
    assert np.median(error_voxels[large]) < 1.5
