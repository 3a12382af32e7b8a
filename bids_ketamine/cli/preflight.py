"""Checking every DWI series before the participant workflow is built (the preflight).

From headers and gradient files only, so that a whole dataset is checked in seconds and every
unusable series is reported by file, with its fix, before anything runs.  The workflow factories
(:mod:`bids_ketamine.workflows`) receive only series that passed.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import numpy as np

from bids_ketamine.bids import FIELDMAP_METHODS, DwiSeries
from bids_ketamine.config import Config
from bids_ketamine.workflows.dwi_preproc import series_mem_gb

#: Largest angle (degrees) between a PEPOLAR reference's phase-encoding direction and the
#: opposite of the DWI's: beyond it the field of view is rotated and the displacements differ.
MAX_PHASE_ENCODING_ANGLE = 2.0

# the logger name the preflight messages have always had (users and tests filter on it)
LOGGER = logging.getLogger("bids_ketamine.workflows.base")


def preflight(config: Config, series_by_subject: dict[str, list[DwiSeries]]):
    """Check every series from its headers and gradient files, before building the workflow.

    Fast (no image data is decoded: seconds for a whole dataset).  Per series: the checks of
    :func:`~bids_ketamine.dwi.gradients.check_series_files`; reverse phase-encoding references
    (a ``dir-`` entity and too few diffusion-weighted volumes for a tensor) are set aside; with ``--combine-runs average`` the runs of a session become one
    series (:func:`~bids_ketamine.bids.combine_runs`), which needs them on one voxel grid size;
    and the tensor's highest b-value is decided (:func:`~bids_ketamine.dwi.gradients.dti_fit_bval`:
    single-shell data above ``--dti-max-bval`` are fitted on their lowest shell, with a note).

    Returns
    -------
    usable : dict
        Participant -> the series that can be processed (``fit_bval`` and ``notes`` set).
    problems : list of str
        One message per series that cannot be processed (naming the file and the fix).  With
        ``--stop-on-first-crash`` the first problem raises instead.
    """
    from bids_ketamine.bids import combine_runs
    from bids_ketamine.dwi.gradients import (
        MIN_TENSOR_VOLUMES,
        DwiInputError,
        check_series_files,
        dti_fit_bval,
        mean_fit_bval,
    )

    from bids_ketamine.dwi.acquisition import longitudinal_acquisition_warnings

    started = time.time()
    usable: dict[str, list[DwiSeries]] = {}
    problems: list[str] = []

    def reject(item: DwiSeries, err: DwiInputError) -> None:
        if config.stop_on_first_crash:
            raise err
        problems.append(str(err))
        LOGGER.error("Skipping %s: %s", item.prefix, err)

    n_checked = 0
    for subject, series in series_by_subject.items():
        checked = {}
        for item in series:
            n_checked += 1
            try:
                checked[item.dwi] = check_series_files(item.dwi, item.bval, item.bvec,
                                                       b0_threshold=config.b0_threshold)
            except DwiInputError as err:
                reject(item, err)
                continue
            n_weighted = int(np.sum(checked[item.dwi].bvals > 0))
            if n_weighted < MIN_TENSOR_VOLUMES and "direction" in item.entities:
                LOGGER.info("Skipping %s: %d diffusion-weighted volume(s) and a dir- entity (reverse phase "
                            "encoding reference), not a DWI series to fit", item.prefix, n_weighted)
                del checked[item.dwi]
        candidates = [item for item in series if item.dwi in checked]
        if config.combine_runs == "average":
            candidates = combine_runs(candidates)
        for item in candidates:
            runs = item.runs or (item,)
            first = checked[runs[0].dwi].img
            try:
                for run in runs[1:]:
                    if checked[run.dwi].img.shape[:3] != first.shape[:3]:
                        raise DwiInputError(
                            f"'{run.dwi}' has a {'x'.join(map(str, checked[run.dwi].img.shape[:3]))} grid but "
                            f"'{runs[0].dwi}' {'x'.join(map(str, first.shape[:3]))}: runs fitted together "
                            "(--combine-runs average) must share their matrix; use --combine-runs separate")
                bvals = np.concatenate([checked[run.dwi].bvals for run in runs])
                fit_bval, note = dti_fit_bval(bvals, config.dti_max_bval, item.bval, config.b0_threshold)
                fit_b_mean = mean_fit_bval(bvals, fit_bval, config.b0_threshold)
            except DwiInputError as err:
                reject(item, err)
                continue
            if note:
                LOGGER.warning("%s: %s", item.prefix, note)
            if item.runs:
                LOGGER.info("%s: runs %s fitted together as one series", item.prefix,
                            ", ".join(run.entities["run"] for run in item.runs))
            shapes = [checked[run.dwi].img.shape for run in runs]
            n_volumes = sum(shape[3] if len(shape) > 3 else 1 for shape in shapes)
            usable.setdefault(subject, []).append(dataclasses.replace(
                item, fit_bval=fit_bval, fit_b_mean=fit_b_mean, notes=item.notes + ((note,) if note else ()),
                mem_gb=series_mem_gb(int(np.prod(shapes[0][:3])), n_volumes)))
        # differences of acquisition between the participant's sessions (recorded with each series)
        protocol_warnings = longitudinal_acquisition_warnings(usable.get(subject, []))
        for prefix, texts in protocol_warnings.items():
            for text in texts:
                LOGGER.warning("%s: %s", prefix, text)
        usable[subject] = [dataclasses.replace(item, notes=item.notes + tuple(protocol_warnings.get(item.prefix, [])))
                           for item in usable.get(subject, [])]
        if not usable[subject]:
            del usable[subject]
    LOGGER.info("Preflight: %d series checked in %.1f s, %d problem(s)", n_checked,
                time.time() - started, len(problems))
    return usable, problems


def usable_t1w(config: Config, layout, subjects) -> dict:
    """The T1w images each participant's anatomy will use (:func:`bids_ketamine.bids.collect_t1w`).

    From headers only.  Participants without a usable T1w take the DWI-only path, with one
    warning each; a T1w whose header cannot be read, or that is not 3-D, is left out with a
    warning naming the file and the fix.  ``--ignore t1w`` returns no T1w at all.

    Returns
    -------
    dict
        Participant -> list of :class:`~bids_ketamine.bids.T1wImage` (participants with at
        least one usable T1w only).
    """
    import nibabel as nib

    from bids_ketamine.bids import collect_t1w

    if "t1w" in config.ignore:
        LOGGER.info("--ignore t1w: every participant takes the DWI-only path")
        return {}
    found = {}
    for subject in subjects:
        images = []
        for image in collect_t1w(layout, subject, config.session_label, config.bids_filters):
            try:
                shape = nib.load(str(image.path)).shape
            except Exception as err:  # nibabel raises several types for unreadable files
                LOGGER.warning("sub-%s: T1w %s cannot be read (%s); it is not used: re-convert it, or "
                               "pass --ignore t1w", subject, image.path, str(err).splitlines()[0])
                continue
            if len(shape) != 3 and not (len(shape) == 4 and shape[3] == 1):
                LOGGER.warning("sub-%s: T1w %s has shape %s, not one 3-D volume; it is not used",
                               subject, image.path, shape)
                continue
            images.append(image)
        if images:
            found[subject] = images
        else:
            LOGGER.warning("sub-%s: no usable T1w; the DWI-only path is used (the mean b=0 "
                           "registered to the template directly)", subject)
    if found:
        from bids_ketamine.anat.antsimage import require_ants

        try:
            require_ants()
        except ImportError as err:
            LOGGER.warning("%s; the DWI-only path is used for every participant", err)
            return {}
    return found


def plan_fieldmaps(config: Config, usable: dict[str, list[DwiSeries]],
                   found: dict[str, list[DwiSeries]] | None = None,
                   t1w_by_subject: dict[str, list] | None = None) -> dict[str, list[DwiSeries]]:
    """Decide each series' susceptibility-distortion correction, from headers and sidecars.

    A series is corrected (:mod:`bids_ketamine.dwi.sdc`) with, in this order:

    1. ``fmap/*_epi`` images meant for it (:func:`bids_ketamine.bids.collect_pepolar`), every
       volume, when phase-encoded the opposite way along the same axis;
    2. otherwise the b=0 volumes of the session's other DWI runs phase-encoded the opposite way
       (a reverse phase-encoding run such as ``acq-rpe_dir-PA``, or the PA run of an AP/PA pair:
       each run of the pair corrects the other);
    3. otherwise a GRE field map meant for it (:func:`bids_ketamine.bids.collect_gre`:
       ``phasediff``, ``phase1``/``phase2`` with their magnitude, or ``fieldmap``;
       :mod:`bids_ketamine.dwi.gre_fieldmap`);
    4. otherwise, with ``--use-syn-sdc``, the participant's T1w (fieldmap-less,
       :mod:`bids_ketamine.dwi.syn_sdc`); a participant without one gets a warning.

    A reference that cannot serve (same polarity or another axis: reported for ``epi`` images
    only; a field of view rotated more than :data:`MAX_PHASE_ENCODING_ANGLE`, another readout
    time, no ``PhaseEncodingDirection``, unreadable), or a series without ``PhaseEncodingDirection`` or
    ``TotalReadoutTime`` beside one, gives a warning that names the file and the fix.  Series
    without field-map data stay uncorrected (one log line per participant).  ``--ignore
    fieldmaps`` uses no field-map data: nothing is corrected, or, with ``--use-syn-sdc``, every
    series from the T1w (as in fMRIPrep, the way to compare the two estimates).

    Parameters
    ----------
    config : Config
    usable : dict
        Participant -> the series to process (:func:`preflight`).
    found : dict, optional
        Participant -> every DWI series found, reverse phase-encoding runs included (those
        :func:`preflight` sets aside); default ``usable``.
    t1w_by_subject : dict, optional
        Participant -> its T1w images (:func:`usable_t1w`): who can have ``--use-syn-sdc``.

    Returns
    -------
    dict
        ``usable`` with :attr:`~bids_ketamine.bids.DwiSeries.fieldmap` set where a correction applies.
    """
    use_fieldmaps = "fieldmaps" not in config.ignore
    if not use_fieldmaps:
        LOGGER.info("--ignore fieldmaps: no field-map data used%s",
                    " (--use-syn-sdc: every series corrected from the T1w)" if config.use_syn_sdc
                    else "; no susceptibility-distortion correction")
        if not config.use_syn_sdc:
            return usable
    found = usable if found is None else found
    planned: dict[str, list[DwiSeries]] = {}
    for subject, series in usable.items():
        planned[subject] = []
        for item in series:
            plan = _field_map_data_plan(config, item, found.get(subject, [])) if use_fieldmaps else None
            if plan is None and config.use_syn_sdc:
                plan = _syn_plan(item, (t1w_by_subject or {}).get(subject, []))
            planned[subject].append(dataclasses.replace(item, fieldmap=plan) if plan else item)
        if use_fieldmaps and not any(item.fieldmap for item in planned[subject]):
            LOGGER.info("sub-%s: no field-map data for the DWI: susceptibility distortion is not corrected",
                        subject)
        for item in planned[subject]:
            if item.fieldmap is not None:
                LOGGER.info("%s: susceptibility distortion corrected from %s (%s)", item.prefix,
                            FIELDMAP_METHODS[item.fieldmap.method],
                            ", ".join(Path(path).name for path in item.fieldmap.reference_files))
        if use_fieldmaps:
            _log_unused_fieldmaps(config.bids_dir, subject, planned[subject])
    if any(item.fieldmap is not None and item.fieldmap.method == "syn" for items in planned.values() for item in items):
        LOGGER.warning("--use-syn-sdc is experimental: it recovers the simulator's field, but on real test data "
                       "(philips-elition) its field did not agree with the reverse phase-encoding estimate and "
                       "made the two polarities' b=0 agree worse; check the report's distortion figures "
                       "(docs/anatomy.md, 'Fieldmap-less')")
    return planned


def _log_unused_fieldmaps(bids_dir: Path, subject: str, series: list[DwiSeries]) -> None:
    """Log, once per participant, the ``fmap/`` images of its processed sessions that no series'
    correction uses (none meant for a DWI series, or one that cannot serve: warned about above)."""
    used = {Path(path).resolve() for item in series if item.fieldmap is not None
            for path in (*item.fieldmap.reference_files, item.fieldmap.magnitude_file) if path}
    subject_dir = Path(bids_dir) / f"sub-{subject}"
    folders = sorted({(subject_dir / f"ses-{item.session}" if item.session else subject_dir) / "fmap"
                      for item in series})
    # the second magnitude image of a GRE field map in use is part of it, though only the first is read
    used_acquisitions = {(path.parent, path.name.rsplit("_", 1)[0]) for path in used}
    unused = [path.relative_to(subject_dir).as_posix() for folder in folders if folder.is_dir()
              for path in sorted(folder.glob("*.nii*")) if path.resolve() not in used
              and not (path.name.rsplit("_", 1)[-1].startswith("magnitude")
                       and (path.resolve().parent, path.name.rsplit("_", 1)[0]) in used_acquisitions)]
    if unused:
        LOGGER.info("sub-%s: field-map images not used by any DWI series: %s (an image is used when its "
                    "IntendedFor names the DWI, or its B0FieldIdentifier is the DWI's B0FieldSource)",
                    subject, ", ".join(unused))


def _field_map_data_plan(config: Config, item: DwiSeries, subject_series: list[DwiSeries]):
    """The plan from the series' field-map data (rules 1-3 of :func:`plan_fieldmaps`), or None."""
    from bids_ketamine.bids import collect_gre, collect_pepolar

    epi = [(path, metadata, "") for path, metadata in collect_pepolar(config.bids_dir, item)]
    own = {run.dwi for run in item.runs or (item,)}
    runs = [(other.dwi, other.sidecar, str(other.bval)) for other in subject_series
            if other.session == item.session and other.dwi not in own and other.bval is not None]
    plan = _pepolar_plan(item, epi, explicit=True) if epi else None
    if plan is None and runs:
        plan = _pepolar_plan(item, runs, explicit=False)
    gre = collect_gre(config.bids_dir, item) if plan is None else None
    return _gre_plan(item, gre) if gre is not None else plan


def _series_encoding(item: DwiSeries, found: str | None):
    """The series' phase encoding ``(affine, axis, sign, direction, readout)`` in RAS+ voxel
    order, or None (with a warning naming the sidecar when ``found``, what would correct the
    series, e.g. ``"field-map data X found"``, is given)."""
    import nibabel as nib

    from bids_ketamine.dwi.sdc import ras_phase_encoding

    first = (item.runs[0] if item.runs else item)
    direction = item.sidecar.get("PhaseEncodingDirection")
    readout = item.sidecar.get("TotalReadoutTime")
    sidecar = first.sidecar_files[-1] if first.sidecar_files else first.dwi
    if direction is None or readout is None:
        if found:
            LOGGER.warning("%s: %s, but %s has no %s; distortion is not corrected: "
                           "add PhaseEncodingDirection and TotalReadoutTime (s) to the DWI sidecar",
                           item.prefix, found, sidecar,
                           "PhaseEncodingDirection" if direction is None else "TotalReadoutTime")
        return None
    try:
        affine = nib.load(str(first.dwi)).affine
        axis, sign = ras_phase_encoding(direction, affine)
    except ValueError as err:
        LOGGER.warning("%s: %s in %s; distortion is not corrected: fix the sidecar", item.prefix, err, sidecar)
        return None
    return affine, axis, sign, str(direction), float(readout)


def _pepolar_plan(item: DwiSeries, references, *, explicit: bool):
    """The PEPOLAR plan of one series from ``(path, sidecar, bval file or "")`` references, or
    None.  ``explicit`` references (``epi`` images meant for the series) that cannot serve are
    reported; other DWI runs of the session are simply passed over unless they are of the
    opposite polarity."""
    import nibabel as nib

    from bids_ketamine.bids import FieldmapPlan
    from bids_ketamine.dwi.sdc import phase_encoding_vector, ras_phase_encoding

    encoding = _series_encoding(item, f"field-map data {references[0][0].name} found" if explicit else None)
    if encoding is None:
        return None
    affine, axis, sign, direction, readout = encoding
    usable_files, bval_files = [], []
    for path, metadata, bval in references:
        other = metadata.get("PhaseEncodingDirection")
        if other is None:
            if explicit:
                LOGGER.warning("%s: %s has no PhaseEncodingDirection in its sidecar; it is not used: add it",
                               item.prefix, path)
            continue
        try:
            other_affine = nib.load(str(path)).affine
            other_axis, other_sign = ras_phase_encoding(other, other_affine)
            angle = np.degrees(np.arccos(np.clip(-phase_encoding_vector(direction, affine)
                                                 @ phase_encoding_vector(other, other_affine), -1, 1)))
        except Exception as err:  # nibabel raises several types for unreadable files; bad direction
            LOGGER.warning("%s: %s cannot be used (%s); it is not used for distortion correction: "
                           "fix its sidecar or re-convert it, or pass --ignore fieldmaps", item.prefix, path,
                           str(err).splitlines()[0])
            continue
        if other_axis != axis or other_sign != -sign:
            if explicit:
                LOGGER.warning("%s: %s is phase-encoded %s, not opposite to the DWI's %s; it is not used "
                               "for PEPOLAR", item.prefix, path, other, direction)
            continue
        if angle > MAX_PHASE_ENCODING_ANGLE:
            LOGGER.warning("%s: %s is phase-encoded %.0f degrees away from the opposite of the DWI's (a "
                           "rotated field of view); it is not used for PEPOLAR", item.prefix, path, angle)
            continue
        other_readout = metadata.get("TotalReadoutTime", readout)
        if abs(float(other_readout) - float(readout)) > 0.01 * float(readout):
            LOGGER.warning("%s: %s has TotalReadoutTime %s s but the DWI %s s; it is not used (PEPOLAR "
                           "needs one readout time)", item.prefix, path, other_readout, readout)
            continue
        usable_files.append(str(path))
        bval_files.append(bval)
    if not usable_files:
        return None
    LOGGER.info("%s: susceptibility distortion corrected by PEPOLAR with %s", item.prefix,
                ", ".join(Path(path).name for path in usable_files))
    return FieldmapPlan(method="pepolar", reference_files=tuple(usable_files),
                        reference_bvals=tuple(bval_files), axis=axis, sign=sign,
                        total_readout_time=readout, phase_encoding_direction=direction)


def _gre_plan(item: DwiSeries, gre: dict):
    """The GRE field-map plan of one series (:func:`bids_ketamine.bids.collect_gre`), or None
    with a warning that names the file and the fix."""
    from bids_ketamine.bids import FieldmapPlan

    first = Path(gre["files"][0])
    encoding = _series_encoding(item, f"field-map data {first.name} found")
    if encoding is None:
        return None
    _, axis, sign, direction, readout = encoding
    method, sidecars = gre["method"], gre["sidecars"]
    echo_times: tuple[float, ...] = ()
    if method == "phasediff":
        echo_times = tuple(sidecars[0].get(key) for key in ("EchoTime1", "EchoTime2"))
        fix = f"add EchoTime1 and EchoTime2 (s) to {first.name}'s sidecar"
    elif method == "phases":
        echo_times = tuple(sidecar.get("EchoTime") for sidecar in sidecars)
        fix = "add EchoTime (s) to the sidecars of phase1 and phase2"
    if method != "fieldmap":
        if any(not isinstance(te, (int, float)) for te in echo_times) or echo_times[1] <= echo_times[0]:
            LOGGER.warning("%s: the GRE field map %s has echo times %s, not two increasing numbers; "
                           "distortion is not corrected: %s", item.prefix, first, list(echo_times), fix)
            return None
    if not gre["magnitude"] and method != "fieldmap":
        LOGGER.warning("%s: the GRE field map %s has no magnitude1 image beside it (needed for its brain "
                       "mask); distortion is not corrected: add it to the fmap folder", item.prefix, first)
        return None
    units = str(sidecars[0].get("Units", "Hz")) if method == "fieldmap" else "Hz"
    if units.lower() not in ("hz", "rad/s"):
        LOGGER.warning("%s: the field map %s has Units %r; distortion is not corrected: give 'Hz' or "
                       "'rad/s' in its sidecar", item.prefix, first, units)
        return None
    LOGGER.info("%s: susceptibility distortion corrected with the GRE field map (%s) %s", item.prefix,
                method, ", ".join(Path(path).name for path in gre["files"]))
    return FieldmapPlan(method=method, reference_files=tuple(str(path) for path in gre["files"]),
                        reference_bvals=(), axis=axis, sign=sign, total_readout_time=readout,
                        phase_encoding_direction=direction, magnitude_file=gre["magnitude"],
                        echo_times=tuple(float(te) for te in echo_times), units=units)


def _syn_plan(item: DwiSeries, t1w_images: list):
    """The fieldmap-less plan of one series (``--use-syn-sdc``) from the participant's T1w
    images, or None with a warning that names what is missing and the fix."""
    from bids_ketamine.bids import FieldmapPlan

    if not t1w_images:
        LOGGER.warning("%s: --use-syn-sdc needs the participant's T1w, and none is used (none found, "
                       "unreadable, or --ignore t1w); distortion is not corrected: add a T1w to the "
                       "participant's anat folder", item.prefix)
        return None
    encoding = _series_encoding(item, "--use-syn-sdc given")
    if encoding is None:
        return None
    _, axis, sign, direction, readout = encoding
    sources = tuple(str(getattr(image, "path", image)) for image in t1w_images)
    LOGGER.info("%s: susceptibility distortion corrected without field map (--use-syn-sdc), from %s",
                item.prefix, ", ".join(Path(path).name for path in sources))
    return FieldmapPlan(method="syn", reference_files=sources, reference_bvals=(), axis=axis, sign=sign,
                        total_readout_time=readout, phase_encoding_direction=direction)
