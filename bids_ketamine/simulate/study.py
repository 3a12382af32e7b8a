"""A whole simulated trial: participants, sessions, the BIDS dataset and its ground truth.

:func:`simulate_trial` is the public entry point (the ``bids-ketamine-simulate`` command
calls it).  Layout of what it writes::

    OUTPUT_BIDS_DIR/
      dataset_description.json  README  participants.tsv  participants.json  sessions.json
      sub-<s>/sub-<s>_sessions.tsv
      sub-<s>/ses-<t>/dwi/sub-<s>_ses-<t>_dwi.nii.gz (.bval .bvec .json)
      sub-<s>/ses-<t>/anat/sub-<s>_ses-<t>_T1w.nii.gz (.json)   only with --t1w
      sub-<s>/ses-<t>/fmap/sub-<s>_ses-<t>_dir-PA_epi.nii.gz (.json)   only with --reverse-pe
      sub-<s>/ses-<t>/fmap/sub-<s>_ses-<t>_phasediff.nii.gz, _magnitude1.nii.gz (.json)   only with --gre-fieldmap
      sourcedata/simulation/truth.json  truth.tsv
      sourcedata/simulation/sub-<s>/ses-<t>/   truth maps on the session's grid (see below)

Kept as one module (~475 lines): the entry point that writes the dataset and its ground truth,
whose files must agree with each other.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np

from bids_ketamine import __version__
from bids_ketamine.config import OFFLINE_TEMPLATE
from bids_ketamine.simulate.anatomy import ROI_GREY_MATTER_DEFINITION, load_template_anatomy
from bids_ketamine.simulate.effects import (
    draw_effects,
    effects_path,
    gm_md_field,
    ideal_label_change,
    roi_centres,
)
from bids_ketamine.simulate.geometry import random_subject_transform
from bids_ketamine.simulate.motion import MOTION_COLUMNS, session_repositioning, volume_motion
from bids_ketamine.simulate.session import make_acquisition, simulate_session
from bids_ketamine.simulate.signal import TissueParameters
from bids_ketamine.simulate.trial import (
    TrialDesign,
    default_outcome_models,
    draw_participants,
    subject_rng,
)
from bids_ketamine.simulate.writer import (
    PARTICIPANTS_JSON,
    SESSIONS_JSON,
    dataset_description,
    dwi_sidecar,
    write_gradients,
    write_json,
    write_nifti,
    write_tsv,
)

__all__ = ["simulate_trial", "truth_map_paths", "t1w_truth_paths"]

TRUTH_DIR = Path("sourcedata") / "simulation"

#: White-matter SNR of the simulated T1w (``--t1w``).
T1W_SNR = 40.0


def truth_map_paths(root: Path, subject: str, session: str, atlas_name: str = "ketamine7") -> dict:
    """Paths of one session's truth maps (all on the session's DWI grid).

    Keys: ``gm``, ``wm``, ``csf`` (volume fractions), ``rois`` (ROI labels, most frequent
    atlas label per voxel), ``roi_gm`` (each ROI's grey-matter voxels, the definition in
    truth.json), ``gm_md`` (true GM MD, um^2/ms), ``wm_direction`` (unit WM fibre direction,
    scanner RAS axes, 4D), ``motion`` (per-volume motion table), ``transforms`` (JSON),
    ``fieldmap`` (with ``--distortion``: the susceptibility field, Hz).
    """
    folder = Path(root) / TRUTH_DIR / f"sub-{subject}" / f"ses-{session}"
    prefix = f"sub-{subject}_ses-{session}"
    return {
        "gm": folder / f"{prefix}_space-dwi_label-GM_probseg.nii.gz",
        "wm": folder / f"{prefix}_space-dwi_label-WM_probseg.nii.gz",
        "csf": folder / f"{prefix}_space-dwi_label-CSF_probseg.nii.gz",
        "rois": folder / f"{prefix}_space-dwi_atlas-{atlas_name}_dseg.nii.gz",
        "roi_gm": folder / f"{prefix}_space-dwi_atlas-{atlas_name}_desc-greymatter_dseg.nii.gz",
        "gm_md": folder / f"{prefix}_space-dwi_desc-greymatter_param-md_dwimap.nii.gz",
        "wm_direction": folder / f"{prefix}_space-dwi_desc-whitematter_param-direction_dwimap.nii.gz",
        "motion": folder / f"{prefix}_desc-motion_timeseries.tsv",
        "transforms": folder / f"{prefix}_desc-transforms.json",
        "fieldmap": folder / f"{prefix}_space-dwi_desc-susceptibility_fieldmap.nii.gz",
    }


def _prepare_output(output_dir: Path, overwrite: bool) -> Path:
    output_dir = Path(output_dir).absolute()
    if output_dir.exists() and not output_dir.is_dir():
        raise FileExistsError(f"{output_dir} exists and is not a folder; choose another OUTPUT_BIDS_DIR")
    if output_dir.is_dir() and any(output_dir.iterdir()):
        if not overwrite:
            raise FileExistsError(
                f"{output_dir} is not empty; give --overwrite to replace a previous simulation, "
                "or choose an empty folder"
            )
        if not (output_dir / TRUTH_DIR / "truth.json").is_file():
            raise FileExistsError(
                f"{output_dir} is not empty and holds no previous simulation "
                f"({TRUTH_DIR / 'truth.json'} is missing): refusing to delete it; choose an "
                "empty folder"
            )
        for child in sorted(output_dir.iterdir()):
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    output_dir.mkdir(parents=True, exist_ok=True)
    return output_dir


def simulate_trial(output_dir, n_subjects: int = 6, seed: int = 0, preset: str = "small", *,
                   overwrite: bool = False, progress: bool = True, images: bool = True,
                   atlas_image=None,
                   roi_names=None, atlas_name: str = "ketamine7", template=None,
                   t1w: bool = False, t1w_voxel_mm: float = 1.0,
                   distortion_hz: float = 0.0, reverse_pe: bool = False, gre_fieldmap: bool = False,
                   **options) -> Path:
    """Simulate a two-arm trial and write it as a BIDS dataset with its ground truth.

    Parameters
    ----------
    output_dir : path
        The dataset's root (created; must be empty unless ``overwrite``).
    n_subjects : int
    seed : int
        Everything drawn depends on it; the same seed writes byte-identical files.
    preset : {"demo", "small", "realistic"}
        3 mm, 6 b=0 + 30 directions; or 2 mm, 6 b=0 + 64 directions (b=1000).
    overwrite : bool
        Replace a previous simulation in ``output_dir``.
    progress : bool
        Show a progress bar over participants.
    images : bool
        ``False`` writes only the clinical tables and the truth (no DWI, no truth maps): a
        fast way to draw many trials for a power analysis.
    atlas_image, roi_names : optional
        ROI label image on the template grid and its names (default: the app's
        ``ketamine7`` atlas).
    atlas_name : str
        Atlas label used in the truth maps' names.
    template : bids_ketamine.resources.Template, optional
        Default: the offline MNI152NLin2009aSym template.
    t1w : bool
        Also write a T1w image in each session's ``anat/`` (``--t1w``;
        :mod:`bids_ketamine.simulate.t1w`), with its true tissue fractions and bias field in
        the truth folder.  Drawn from its own random stream: every other file is the same
        as without it.
    t1w_voxel_mm : float
        The T1w's isotropic voxel size.
    distortion_hz : float
        Peak of the susceptibility field (Hz; ``--distortion``, 0: none): every DWI series is
        distorted along its phase-encoding axis (the sidecar's ``PhaseEncodingDirection`` and
        ``TotalReadoutTime``; :mod:`bids_ketamine.simulate.distortion`), and the field on each
        session's grid is written to the truth folder.
    reverse_pe : bool
        With ``distortion_hz``: also write the b=0 volumes read out with the opposite polarity
        as ``fmap/*_dir-PA_epi.nii.gz`` (``IntendedFor`` the session's DWI), from their own
        random stream.
    gre_fieldmap : bool
        With ``distortion_hz``: also write a GRE field map of each session (``phasediff`` with
        ``magnitude1``, on a coarser grid stored the other way round; :func:`bids_ketamine.simulate.distortion.simulate_gre_fieldmap`),
        from its own random stream.
    **options
        Any field of :class:`~bids_ketamine.simulate.trial.TrialDesign`: ``snr``,
        ``motion``, ``md_change_ketamine``, ``md_change_saline``, ``arm_ratio``,
        ``sessions``, ``null``, ``noise``, ``motion_enabled``, ``roi_correlation``,
        ``visit_interval_hours``, ``orientation``, ``oblique_deg``, ...

    Returns
    -------
    Path
        The dataset's root.

    Raises
    ------
    ValueError
        For invalid options.
    FileExistsError
        If ``output_dir`` is not empty and ``overwrite`` is false.
    """
    if distortion_hz < 0 or ((reverse_pe or gre_fieldmap) and not distortion_hz):
        raise ValueError(f"distortion_hz must be >= 0 (got {distortion_hz}); reverse_pe and gre_fieldmap "
                         "need it > 0")
    unknown = set(options) - set(TrialDesign.__dataclass_fields__)
    if unknown:
        raise ValueError(f"unknown simulation options: {', '.join(sorted(unknown))}")
    design = TrialDesign(n_subjects=int(n_subjects), seed=int(seed), preset=preset, **options)
    acquisition = make_acquisition(design.preset, design.orientation, design.oblique_deg)
    root = _prepare_output(Path(output_dir), overwrite)
    anatomy = load_template_anatomy(template, atlas_image, roi_names)
    outcomes = default_outcome_models(design.null)
    participants = draw_participants(design, anatomy.roi_names, outcomes)

    from tqdm.auto import tqdm

    sidecar = dwi_sidecar(acquisition.preset, acquisition.shape)
    distortion = _distortion(sidecar, distortion_hz)
    truth_rows = []
    iterator = tqdm(participants, desc="simulating", unit="subject",
                    disable=not progress or len(participants) < 2)
    centres = roi_centres(anatomy.codes, anatomy.affine, anatomy.n_rois)
    for participant in iterator:
        geometry = subject_rng(design.seed, participant.index, "geometry")
        subject_transform = random_subject_transform(geometry, anatomy.brain_centre)
        effects = _draw_participant_effects(design, participant, centres, anatomy.brain_centre)
        for session_index, session in enumerate(design.sessions if images else ()):
            draws = subject_rng(design.seed, participant.index, "session", session_index)
            pose = session_repositioning(draws, design.session_translation_mm,
                                         design.session_rotation_deg)
            gain = float(np.clip(1.0 + 0.05 * draws.normal(), 0.85, 1.15))
            motion = volume_motion(draws, len(acquisition.bvals), design.effective_motion)
            tissue, field = participant.tissue, None
            if effects is not None:
                # issue 20: the change as a template-space field, and the session's scanner drift
                drift = effects["sessions"][session_index]["drift_pct"]
                tissue = _drifted(tissue, drift)
                field = gm_md_field(anatomy.codes, anatomy.affine, participant.md_groups(0),
                                    effects["visits"][:session_index], drift)
            result = simulate_session(
                anatomy, acquisition, md_groups=participant.md_groups(session_index),
                tissue=tissue, subject_transform=subject_transform,
                session_pose=pose, motion=motion, snr=design.effective_snr, rng=draws, gain=gain,
                gm_md_field=field, distortion=distortion, motion_sampling=design.motion_sampling,
                reverse_rng=(subject_rng(design.seed, participant.index, "reverse_pe", session_index)
                             if reverse_pe else None),
                gre_rng=(subject_rng(design.seed, participant.index, "gre_fieldmap", session_index)
                         if gre_fieldmap else None),
            )
            _write_session(root, participant, session, result, sidecar, acquisition,
                           subject_transform, pose, gain, atlas_name, anatomy.roi_names)
            if distortion is not None:
                _write_distortion(root, participant.label, session, result, sidecar, distortion, atlas_name)
            if t1w:
                _write_t1w(root, participant, session, anatomy, template, subject_transform, pose,
                           gain, subject_rng(design.seed, participant.index, "t1w", session_index),
                           t1w_voxel_mm, design)
        _write_sessions_table(root, participant, design, outcomes)
        if effects is not None:
            write_json(effects_path(root / TRUTH_DIR, participant.label), effects)
        truth_rows.extend(_truth_rows(participant, design, anatomy.roi_names, outcomes))

    _write_top_level(root, design, participants, outcomes)
    _write_truth(root, design, anatomy, acquisition, outcomes, truth_rows, atlas_name, images)
    if design.effect_model == "blobs":
        _write_ideal_truth(root, design, anatomy, outcomes, truth_rows)
    return root


def _write_ideal_truth(root, design, anatomy, outcomes, rows):
    """``--effect-model blobs``: truth.tsv's ROI MD columns become the ideal values of the atlas'
    ROIs (:func:`~bids_ketamine.simulate.effects.ideal_label_change` of the simulator's atlas)."""
    import nibabel as nib

    atlas = nib.Nifti1Image((anatomy.codes // 4).astype(np.int16), anatomy.affine)
    by_key = {}
    for visit in range(1, len(design.sessions)):
        ideal = ideal_label_change(root / TRUTH_DIR, atlas, session_index=visit)
        for item in ideal.itertuples():
            by_key[(item.participant_id, anatomy.roi_names[item.label - 1],
                    f"ses-{design.sessions[visit]}")] = item
    for row in rows:
        item = by_key[(row["participant_id"], row["roi"], row["session_id"])]
        row.update(md_baseline=item.md_baseline, md_followup=item.md_followup,
                   md_change=item.md_change, md_change_pct=item.md_change_pct)
    columns = list(rows[0]) if rows else []
    write_tsv(root / TRUTH_DIR / "truth.tsv", columns, rows)


def _draw_participant_effects(design, participant, centres, brain_centre):
    """``--effect-model blobs``: the change field of every follow-up visit and each session's
    scanner drift (None for the ``roi`` model).  The subject's drawn changes are reused: the
    global GM change, and per ROI the ROI-level part (times ``blob_amplitude``) as the blob's
    peak."""
    if design.effect_model != "blobs":
        return None
    rng = subject_rng(design.seed, participant.index, "effects")
    visits = []
    for visit in range(1, len(design.sessions)):
        global_pct = 100.0 * (participant.gm_md[visit] / participant.gm_md[visit - 1] - 1.0)
        local = participant.md_change_pct[visit - 1] - global_pct
        visits.append(draw_effects(rng, centres, brain_centre, global_pct,
                                   design.blob_amplitude * local, null=design.null))
    drift = [0.0] + [float(design.scanner_drift_pct * rng.normal()) for _ in design.sessions[1:]]
    return {
        "label": participant.label,
        "model": "change(x) = global_pct + sum_r a_r exp(-|x - c_r|^2 / (2 sigma^2)) + "
                 "(x - gradient_origin) . gradient, percent per follow-up visit, template mm; "
                 "GM MD(x) = md_groups[roi(x)] * prod_visits (1 + change / 100) * (1 + drift_pct / 100)",
        "visits": visits,
        "sessions": [{"session_id": session, "drift_pct": d,
                      "md_groups": np.round(participant.md_groups(0), 8).tolist()}
                     for session, d in zip(design.sessions, drift)],
    }


def _drifted(tissue: TissueParameters, drift_pct: float) -> TissueParameters:
    """Every diffusivity of the tissue scaled by the scanner drift."""
    factor = 1.0 + drift_pct / 100.0
    return dataclasses.replace(tissue, md_csf=tissue.md_csf * factor,
                               wm_eigenvalues=tuple(float(v) * factor for v in tissue.wm_eigenvalues))


def _write_session(root, participant, session, result, sidecar, acquisition, subject_transform,
                   pose, gain, atlas_name, roi_names):
    label = participant.label
    stem = root / f"sub-{label}" / f"ses-{session}" / "dwi" / f"sub-{label}_ses-{session}_dwi"
    write_nifti(stem.with_name(stem.name + ".nii.gz"), result.data, result.affine,
                repetition_time=sidecar["RepetitionTime"])
    write_gradients(stem, result.bvals, result.bvecs)
    write_json(stem.with_name(stem.name + ".json"), sidecar)

    paths = truth_map_paths(root, label, session, atlas_name)
    for tissue in ("gm", "wm", "csf"):
        write_nifti(paths[tissue], result.anatomy.fractions[tissue], result.affine, np.float32)
    write_nifti(paths["rois"], result.anatomy.roi_labels, result.affine, np.uint8)
    write_nifti(paths["roi_gm"], result.roi_grey_matter, result.affine, np.uint8)
    write_nifti(paths["gm_md"], result.gm_md, result.affine, np.float32)
    write_nifti(paths["wm_direction"], result.anatomy.wm_direction, result.affine, np.float32)
    write_tsv(paths["motion"], MOTION_COLUMNS,
              [dict(zip(MOTION_COLUMNS, row)) for row in result.motion])
    write_json(paths["transforms"], {
        "head_to_template_affine": np.round(subject_transform.matrix(), 8),
        "head_to_template_displacement": subject_transform.displacement.to_dict(),
        "head_to_scanner": np.round(pose, 8),
        "image_affine": np.round(result.affine, 8),
        "receiver_gain": round(gain, 8),
        "noise_sigma": round(result.noise_sigma, 8),
        "md_gm_outside_rois": round(float(result.md_groups[0]), 8),
        "md_rois": {name: round(float(v), 8) for name, v in
                    zip(roi_names, result.md_groups[1:])},
        "tissue": participant.tissue.to_dict(),
        "description": (
            "template = D(A @ head + a) with A, a the affine part and D the displacement "
            "(x + sum_k amp_k * sin(k_k . x + phase_k)); scanner = head_to_scanner @ head for "
            "the static head; volume v shows the head moved by the rigid motion of row v of "
            "the motion table (translations mm, rotations degrees about x, y, z, R = Rz Ry Rx, "
            "about the scanner isocentre)"
        ),
    })


def _distortion(sidecar: dict, peak_hz: float):
    """The distortion of every series (the sidecar's phase encoding), or None without one."""
    if not peak_hz:
        return None
    from bids_ketamine.simulate.distortion import Distortion

    direction = sidecar["PhaseEncodingDirection"]
    return Distortion(float(peak_hz), float(sidecar["TotalReadoutTime"]), axis="ijk".index(direction[0]),
                      sign=-1 if direction.endswith("-") else 1)


def _write_distortion(root, label, session, result, sidecar, distortion, atlas_name):
    """``--distortion``: the field (Hz) in the truth folder; ``--reverse-pe``: the b=0 volumes
    read out with the opposite polarity as a BIDS ``epi`` field map for the DWI."""
    write_nifti(truth_map_paths(root, label, session, atlas_name)["fieldmap"], result.field_hz,
                result.affine, np.float32)
    intended = [f"ses-{session}/dwi/sub-{label}_ses-{session}_dwi.nii.gz"]
    if result.gre_fieldmap is not None:
        gre = result.gre_fieldmap
        stem = root / f"sub-{label}" / f"ses-{session}" / "fmap" / f"sub-{label}_ses-{session}"
        write_nifti(Path(f"{stem}_phasediff.nii.gz"), gre.phase_difference, gre.affine, np.float32)
        write_json(Path(f"{stem}_phasediff.json"), {"EchoTime1": gre.echo_times[0], "EchoTime2": gre.echo_times[1],
                                                   "Units": "rad", "IntendedFor": intended})
        write_nifti(Path(f"{stem}_magnitude1.nii.gz"), gre.magnitude, gre.affine, np.float32)
        write_json(Path(f"{stem}_magnitude1.json"), {"EchoTime": gre.echo_times[0]})
    if result.reverse_b0 is None:
        return
    stem = root / f"sub-{label}" / f"ses-{session}" / "fmap" / f"sub-{label}_ses-{session}_dir-PA_epi"
    write_nifti(stem.with_name(stem.name + ".nii.gz"), result.reverse_b0, result.affine,
                repetition_time=sidecar["RepetitionTime"])
    write_json(stem.with_name(stem.name + ".json"), dict(
        sidecar, PhaseEncodingDirection=distortion.reversed().phase_encoding_direction,
        IntendedFor=intended))


def _write_t1w(root, participant, session, anatomy, template, subject_transform, pose, gain, rng,
               voxel_mm, design):
    """``--t1w``: the session's T1w (head placed as in its DWI) and its truth."""
    from bids_ketamine.resources import get_template
    from bids_ketamine.simulate.t1w import T1W_INTENSITY, simulate_t1w

    template = template or get_template(OFFLINE_TEMPLATE)
    pose_inverse = np.linalg.inv(pose)

    def scanner_to_template(points):
        return subject_transform(points @ pose_inverse[:3, :3].T + pose_inverse[:3, 3])

    image = simulate_t1w(anatomy, template.t1w, scanner_to_template, rng=rng,
                         voxel_size=voxel_mm, gain=gain, orientation=design.orientation,
                         snr=T1W_SNR if design.noise else None)
    label = participant.label
    stem = root / f"sub-{label}" / f"ses-{session}" / "anat" / f"sub-{label}_ses-{session}_T1w"
    write_nifti(stem.with_name(stem.name + ".nii.gz"), np.rint(image.data), image.affine, np.int16)
    write_json(stem.with_name(stem.name + ".json"), {"Modality": "MR", "MRAcquisitionType": "3D",
                                                     "SimulatedBy": "bids-ketamine-simulate --t1w"})
    paths = t1w_truth_paths(root, label, session)
    for tissue in ("gm", "wm", "csf"):
        write_nifti(paths[tissue], image.anatomy.fractions[tissue], image.affine, np.float32)
    write_nifti(paths["bias"], image.bias, image.affine, np.float32)
    write_json(paths["description"], {
        "intensity": T1W_INTENSITY, "snr_wm": T1W_SNR if design.noise else None,
        "voxel_mm": voxel_mm, "receiver_gain": round(gain, 8),
        "model": "T1w = gain * bias * (sum_t f_t I_t + (1 - f_brain) * template T1w outside the "
                 "brain) + Rician noise of SD I_wm / snr_wm",
    })


def t1w_truth_paths(root: Path, subject: str, session: str) -> dict:
    """Paths of one session's T1w truth (``--t1w``; on the T1w's grid): ``gm``, ``wm``,
    ``csf`` volume fractions, ``bias`` (the multiplicative field), ``description`` (JSON)."""
    folder = Path(root) / TRUTH_DIR / f"sub-{subject}" / f"ses-{session}"
    prefix = f"sub-{subject}_ses-{session}_space-T1w"
    return {
        "gm": folder / f"{prefix}_label-GM_probseg.nii.gz",
        "wm": folder / f"{prefix}_label-WM_probseg.nii.gz",
        "csf": folder / f"{prefix}_label-CSF_probseg.nii.gz",
        "bias": folder / f"{prefix}_desc-bias_T1w.nii.gz",
        "description": folder / f"sub-{subject}_ses-{session}_desc-t1w_truth.json",
    }


def _write_sessions_table(root, participant, design, outcomes):
    columns = ["session_id", "acq_time"] + [m.name for m in outcomes]
    rows = []
    for k, session in enumerate(design.sessions):
        row = {"session_id": f"ses-{session}",
               "acq_time": participant.acq_times[k].strftime("%Y-%m-%dT%H:%M:%S")}
        for model in outcomes:
            row[model.name] = participant.scores[model.name][k]
        rows.append(row)
    write_tsv(root / f"sub-{participant.label}" / f"sub-{participant.label}_sessions.tsv", columns, rows)


def _truth_rows(participant, design, roi_names, outcomes):
    rows = []
    for visit in range(1, len(design.sessions)):
        for r, roi in enumerate(roi_names):
            baseline, followup = participant.roi_md[0, r], participant.roi_md[visit, r]
            row = {
                "participant_id": f"sub-{participant.label}",
                "group": participant.group,
                "roi": roi,
                "session_id": f"ses-{design.sessions[visit]}",
                "md_baseline": baseline,
                "md_followup": followup,
                "md_change": followup - baseline,
                "md_change_pct": 100.0 * (followup - baseline) / baseline,
                "md_gm_outside_rois_baseline": participant.gm_md[0],
                "md_gm_outside_rois_followup": participant.gm_md[visit],
            }
            for model in outcomes:
                scores = participant.scores[model.name]
                row[f"{model.name}_baseline"] = scores[0]
                row[f"{model.name}_followup"] = scores[visit]
                row[f"{model.name}_change"] = scores[visit] - scores[0]
                row[f"{model.name}_change_latent"] = participant.latent_changes[model.name][visit - 1]
            rows.append(row)
    return rows


def _write_top_level(root, design, participants, outcomes):
    write_json(root / "dataset_description.json",
               dataset_description(__version__, design.seed, design.preset))
    write_tsv(root / "participants.tsv", ["participant_id", "group", "age", "sex"],
              [{"participant_id": f"sub-{p.label}", "group": p.group, "age": p.age, "sex": p.sex}
               for p in participants])
    write_json(root / "participants.json", PARTICIPANTS_JSON)
    write_json(root / "sessions.json",
               {k: v for k, v in SESSIONS_JSON.items()
                if k in ("session_id", "acq_time") or k in {m.name for m in outcomes}})
    (root / "README").write_text(_readme(design))


def _readme(design) -> str:
    return (
        "Simulated two-arm trial (ketamine vs saline) written by bids-ketamine-simulate "
        f"{__version__}.\n\n"
        f"Preset {design.preset}, seed {design.seed}, {design.n_subjects} participants, sessions "
        f"{', '.join(design.sessions)}.\n"
        "Every image and score is synthetic. The ground truth (generative model, parameters, per "
        "participant and ROI MD and outcome changes, truth maps per session) is in "
        "sourcedata/simulation/. See docs/simulation.md of bids_ketamine.\n"
    )


def _write_truth(root, design, anatomy, acquisition, outcomes, rows, atlas_name, images):
    columns = ["participant_id", "group", "roi", "session_id", "md_baseline", "md_followup",
               "md_change", "md_change_pct", "md_gm_outside_rois_baseline",
               "md_gm_outside_rois_followup"]
    for model in outcomes:
        columns += [f"{model.name}_{s}" for s in ("baseline", "followup", "change", "change_latent")]
    write_tsv(root / TRUTH_DIR / "truth.tsv", columns, rows)
    preset = acquisition.preset
    tissue = TissueParameters()
    truth = {
        "generator": {"name": "bids-ketamine-simulate", "version": __version__},
        "seed": design.seed,
        "images": images,
        "design": design.to_dict(),
        "preset": {
            "name": preset.name, "voxel_size_mm": preset.voxel_size, "n_b0": preset.n_b0,
            "n_directions": preset.n_directions, "bvalue": preset.bvalue,
            "fov_mm": list(preset.fov_mm), "shape": list(acquisition.shape),
            "default_snr": preset.snr, "default_motion": preset.motion,
        },
        "acquisition": {
            "image_affine": np.round(acquisition.affine, 8),
            "orientation": acquisition.orientation,
            "oblique_deg": acquisition.oblique_deg,
            "bvals": acquisition.bvals,
            "b0_volumes": np.flatnonzero(acquisition.bvals == 0),
            "gradients_scanner_axes": np.round(acquisition.gradients, 8),
            "bvec_convention": "BIDS/FSL: image voxel axes, x negated when det(affine) > 0; "
                               "not rotated for per-volume motion",
            "storage": "int16, no scaling (scl_slope 1): signal units, S0 of grey matter about 2000",
            "interpolation_for_motion": (
                "cubic B-spline resampling of each volume's static image (the head moved by the volume's "
                "rigid motion)" if design.motion_sampling == "resample" else
                "none: the anatomy supersampled where each volume's rigid motion puts the head"),
        },
        "anatomy": {
            "template": anatomy.provenance,
            "atlas_name": atlas_name,
            "roi_names": list(anatomy.roi_names),
            "tissue_labels": "argmax of the template's CSF, GM, WM probabilities inside its brain mask (1 mm)",
            "partial_volume": "each output voxel is split into n^3 sub-samples (n = voxel size / 1 mm), "
                              "mapped to template space, nearest 1 mm label; fractions = counts / n^3",
            "roi_labels_in_dwi_space": "most frequent atlas label among a voxel's sub-samples",
            "grey_matter_md": "GM sub-samples inside ROI k have the ROI's MD, other GM the subject's "
                              "global GM MD; the truth map holds their volume-weighted mean",
            "wm_orientation": "eigenvector of the smallest eigenvalue of the structure tensor "
                              "(gradient outer product, Gaussian sigma 2 voxels, after smoothing the "
                              "WM probability with sigma 1 voxel) on a 2 mm version of the template's "
                              "WM map; pulled back to each session through the local Jacobian",
            "subject_transform": "head -> template: rotation (SD 3 deg) x 1/scale (scale U(0.92, 1.08) "
                                 "per axis) + translation (SD 3 mm) + smooth displacement (4 plane "
                                 "waves, wavelengths 70-140 mm, RMS 2 mm per axis)",
            "session_repositioning": f"rigid, SD {design.session_translation_mm} mm and "
                                     f"{design.session_rotation_deg} deg per axis (clipped at 2.5 SD)",
        },
        "grey_matter_voxels": ROI_GREY_MATTER_DEFINITION,
        "tissue": {
            **tissue.to_dict(),
            "units": {"s0": "signal units (x session receiver gain)", "diffusivity": "um^2/ms"},
            "wm_eigenvalues_jitter": "x (1 + N(0, 0.03)) per subject",
            "receiver_gain": "1 + N(0, 0.05) per session, clipped to [0.85, 1.15]",
        },
        "md_model": {
            "gm_global": "0.80 * (1 + N(0, 0.03)) per subject (um^2/ms)",
            "roi_baseline": "gm_global * (1 + N(0, 0.03)) per subject and ROI",
            "change": "percent per follow-up visit: GM outside the ROIs changes by the subject's "
                      "latent mean_arm + sd_arm sqrt(rho) z_subject, ROI r by that plus "
                      "sd_arm sqrt(1 - rho) e_roi (z, e ~ N(0, 1)); MD_k = MD_(k-1) * "
                      "(1 + change_k / 100); zero with null",
            "ketamine": {"mean_pct": design.md_change_ketamine[0], "sd_pct": design.md_change_ketamine[1]},
            "saline": {"mean_pct": design.md_change_saline[0], "sd_pct": design.md_change_saline[1]},
            "roi_correlation": design.roi_correlation,
            "null": design.null,
            "effect_model": design.effect_model,
            "blobs": ("smooth change field in template space (bids_ketamine.simulate.effects); "
                      "parameters per participant in sub-*/sub-*_effects.json; truth.tsv holds "
                      "the ideal change of each atlas ROI (mean over its grey matter)"
                      if design.effect_model == "blobs" else None),
            "blob_amplitude": design.blob_amplitude,
            "scanner_drift_pct_sd": design.scanner_drift_pct,
        },
        "outcome_model": {
            "formula": "change = intercept + treatment * T + sum_r (md_r + interaction_r * T) * "
                       "md_change_r + age_per_decade * (age - 45) / 10 + baseline_slope * "
                       "(baseline - baseline_mean) + N(0, noise_sd); followup = clip(round(baseline "
                       "+ change), 0, scale_max); T = 1 for ketamine; md_change_r in um^2/ms "
                       "(followup - baseline, cumulative from baseline for later visits)",
            "outcomes": {m.name: m.to_dict() for m in outcomes},
            "participants": "age N(42, 12) clipped 18-70; sex F with probability 0.6; arms by exact "
                            "allocation to the ratio, seeded permutation",
            "acq_time": f"baseline on a random day of 2023 between 08:00 and 12:00; each later "
                        f"session {design.visit_interval_hours} h after the previous one",
        },
        "noise": {
            "model": "Rician: |S + N(0, sigma) + i N(0, sigma)|, sigma = S0_GM x gain / SNR",
            "snr": design.effective_snr,
        },
        "motion": {
            "model": "per-volume rigid motion, AR(1) with coefficient 0.8 and marginal SD = scale "
                     "(mm for translations, degrees for rotations) about the scanner isocentre; the "
                     "signal uses the gradient in the moved head's frame",
            "scale": design.effective_motion,
        },
        "files": {
            "truth.tsv": "one row per participant, ROI and follow-up session (long format): true ROI "
                         "grey-matter MD at baseline and follow-up (um^2/ms) and the scores",
            "sub-*/ses-*/": "truth maps on the session's DWI grid before per-volume motion: tissue "
                            "fractions (label-GM/WM/CSF_probseg), ROI labels (atlas-*_dseg), ROI "
                            "grey-matter voxels (desc-greymatter_dseg), true GM MD "
                            "(desc-greymatter_param-md_dwimap, um^2/ms), WM direction in scanner axes "
                            "(desc-whitematter_param-direction_dwimap), motion table, transforms",
        },
    }
    write_json(root / TRUTH_DIR / "truth.json", truth)
