"""The methods paragraphs of the reports, from the options the run recorded.

The group report's Methods section (:func:`group_methods`) is built from ``models.json``.

The paragraph follows the participant workflow (:mod:`bids_ketamine.workflows.base`): one
sentence per step that ran, with the options of ``config.json`` (read through
:class:`~bids_ketamine.config.Config`) and the references of :mod:`.references`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bids_ketamine import __version__
from bids_ketamine.reports.collect import ParticipantOutputs, read_json
from bids_ketamine.reports.html import Section, details, escape, key_value_table, not_available
from bids_ketamine.reports.references import (
    Citations,
    atlas_citations,
    atlas_provenance,
    atlas_reference_keys,
    template_reference_keys,
)


def participant_methods(outputs: ParticipantOutputs, config: dict[str, Any]) -> Section:
    """The Methods section of one participant's report.

    Parameters
    ----------
    outputs : ParticipantOutputs
        What the participant level wrote.
    config : dict
        The run's options (:meth:`Config.to_dict` of the record), empty when not recorded.
    """
    version = _generated_version(outputs.output_dir) or __version__
    cite = Citations(version=version)
    cfg = config
    n_series, sessions = len(outputs.series), outputs.sessions
    text = [
        f"Diffusion MRI of sub-{escape(outputs.subject)} ({n_series} series"
        + (f" in {len(sessions)} sessions" if sessions else "")
        + f") was processed with bids_ketamine {escape(version)} {cite('bids_ketamine')}, "
        f"a BIDS App built on nipype {cite('nipype')}, DIPY {cite('dipy')}, nibabel "
        f"{cite('nibabel')}, nilearn {cite('nilearn')} and pybids {cite('pybids')}."
    ]
    denoise = cfg.get("denoise") or next((s.denoise_model for s in outputs.series
                                          if s.denoise_model), None)
    if denoise == "mppca":
        where = ("in every voxel" if cfg.get("denoise_full_fov") else
                 "in the brain of the raw series plus a 10 mm margin")
        text.append(f"Noise was removed by Marchenko-Pastur PCA (MP-PCA) {cite('mppca')} "
                    f"{where}, before any interpolation.")
    elif denoise == "patch2self":
        text.append(f"Noise was removed with Patch2Self {cite('patch2self')} before any "
                    "interpolation.")
    elif denoise == "none":
        text.append("No denoising was applied.")
    if cfg.get("degibbs"):
        text.append(f"Gibbs ringing was removed after denoising with the local sub-voxel "
                    f"shift method {cite('gibbs')}.")
    if any("motion" in s.files for s in outputs.series):
        text.append("Head motion was corrected by rigid registration of every volume "
                    "(b=0 volumes to their mean, diffusion-weighted volumes to a tensor "
                    "prediction of themselves) and the gradient directions were rotated "
                    f"with each volume; all volumes were resampled once. Framewise "
                    f"displacement {cite('power2012')} summarises the motion per volume.")
    fit = cfg.get("fit_method")
    text.append(
        f"The diffusion tensor {cite('dti')} was fitted"
        + (f" by {escape(str(fit).upper())}" if fit else "")
        + (f" to b=0 and the shells at or below b = {float(cfg['dti_max_bval']):g} s/mm&sup2;"
           if cfg.get("dti_max_bval") else "")
        + _high_shell_clause(outputs.series, cfg.get("dti_max_bval"))
        + "; diffusivities are reported in um&sup2;/ms."
    )
    if len(sessions) >= 2 and cfg.get("longitudinal", True):
        text.append("Each session was rigidly aligned to a within-subject midpoint space, "
                    "so that no session is privileged.")
    spaces = sorted({space for s in outputs.series for space in s.template_maps})
    space = spaces[0] if spaces else cfg.get("template")
    if space:
        refs = template_reference_keys(space)
        text.append(
            f"Images were registered to the {escape(space)} template "
            f"{cite(*refs) if refs else ''} with symmetric diffeomorphic normalisation "
            f"(SyN) {cite('syn')}."
        )
    atlases = sorted({name for s in outputs.series for name in s.atlases}) or (
        [cfg["atlas"]] if cfg.get("atlas") else [])
    for atlas in atlases:
        provenance = atlas_provenance(atlas)
        keys = atlas_reference_keys(provenance)
        for number, citation in enumerate(atlas_citations(provenance)):
            cite.register(f"atlas:{atlas}:{number}", citation)
            keys.append(f"atlas:{atlas}:{number}")
        marks = [cite(*keys)] if keys else []
        source = (" (built from "
                  + ", ".join(sorted({str(r["source_atlas"]).split(" (")[0]
                                      for r in provenance.get("ROIs", [])
                                      if isinstance(r, dict) and r.get("source_atlas")}))
                  + ")") if provenance and provenance.get("ROIs") else ""
        text.append(f"Regions of interest of the {escape(atlas)} atlas{escape(source)} "
                    f"{' '.join(marks)} were mapped into each session's DWI space.")
    threshold, gm_threshold = cfg.get("csf_md_threshold"), cfg.get("gm_threshold")
    text.append(
        (f"Voxels with MD above {float(threshold):g} um&sup2;/ms were excluded as "
         "CSF-contaminated; " if threshold else "")
        + (f"voxels whose grey-matter probability (the template's, warped into the session) "
           f"was below {float(gm_threshold):g} were excluded as not grey matter; "
           if gm_threshold is not None and cfg else "")
        + "the mean, median and standard deviation of each tensor parameter were computed "
        f"per ROI. Group-level models use statsmodels {cite('statsmodels')}."
    )
    body = (f'<p class="methods" id="methods-text">{" ".join(text)}</p>'
            "<p class=\"lead\">This paragraph is generated from the recorded options and may "
            "be copied into a manuscript.</p><h3>References</h3>" + cite.html())
    return Section("methods", "Methods", body)


def _generated_version(output_dir: Path) -> str | None:
    """The bids_ketamine version recorded in dataset_description.json (GeneratedBy)."""
    data = read_json(output_dir / "dataset_description.json") or {}
    for entry in data.get("GeneratedBy", []) or []:
        if isinstance(entry, dict) and entry.get("Version"):
            return str(entry["Version"])
    return None


def _high_shell_clause(series, dti_max_bval) -> str:
    """Methods text for series without a shell at or below ``--dti-max-bval`` (fitted on their
    lowest shell, as their model sidecar's ``BValuesUsed`` records)."""
    if not dti_max_bval:
        return ""
    above = []
    for item in series:
        used = (read_json(item.files.get("tensor_json")) or {}).get("BValuesUsed") or []
        if used and max(used) > float(dti_max_bval):
            above.append(f"{escape(item.label)} (b = {max(used):g})")
    if not above:
        return ""
    return (" (series without such a shell were fitted to b=0 and their lowest shell: "
            + ", ".join(above) + "; their MD is not comparable with lower-b data)")


def group_methods(info: dict[str, Any], has_info: bool, cite: Citations) -> Section:
    """The Methods section of the group report, from ``models.json`` (``info``).

    Parameters
    ----------
    info : dict
        ``models.json`` of the group level (empty when absent).
    has_info : bool
        Whether ``models.json`` exists.
    cite : Citations
        The report's citations (the references list closes the section).
    """
    parts = [
        "<p class=\"methods\">Group statistics were computed by bids_ketamine "
        f"{escape(__version__)} {cite('bids_ketamine')} with statsmodels "
        f"{cite('statsmodels')}: for every ROI, parameter and outcome, an ordinary "
        "least-squares model of the outcome change on treatment, the change of the "
        "imaging parameter and their interaction (and covariates), following the design "
        f"of Kopelman et al. {cite('kopelman2023')}; p-values are reported raw and "
        f"Benjamini-Hochberg corrected {cite('fdr')} across ROIs and outcomes for each "
        "term.</p>"
    ]
    if not has_info:
        parts.append(not_available("Options and software versions", "models.json"))
    else:
        for key, title in (("estimation", "Estimation"), ("fdr", "Multiple comparisons"),
                           ("covariates", "Covariates"), ("software", "Software versions")):
            value = info.get(key)
            if isinstance(value, dict) and value:
                parts.append(f"<h3>{title}</h3>" + key_value_table(value))
        options = info.get("options")
        if isinstance(options, dict):
            parts.append(details("All options of the run",
                                 f"<pre>{escape(json.dumps(options, indent=2, sort_keys=True))}</pre>"))
    parts.append("<h3>References</h3>" + cite.html())
    return Section("methods", "Methods", "".join(parts))
