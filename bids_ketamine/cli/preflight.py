"""Checking every DWI series before the participant workflow is built (the preflight).

From headers and gradient files only, so that a whole dataset is checked in seconds and every
unusable series is reported by file, with its fix, before anything runs.  The workflow factories
(:mod:`bids_ketamine.workflows`) receive only series that passed.
"""

from __future__ import annotations

import dataclasses
import logging
import time

import numpy as np

from bids_ketamine.bids import DwiSeries
from bids_ketamine.config import Config
from bids_ketamine.workflows.dwi_preproc import series_mem_gb

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
                item, fit_bval=fit_bval, notes=item.notes + ((note,) if note else ()),
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
