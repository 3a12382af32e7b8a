"""Templates and atlases: TemplateFlow when its files are present, packaged files offline.

Nothing here downloads.  TemplateFlow is asked only for files already in
``TEMPLATEFLOW_HOME`` (the container fetches them at build time); without them the
MNI152 2009 *symmetric* template that nilearn ships (T1w, GM and WM probability maps) is
used, and its space is recorded as ``MNI152NLin2009aSym`` so that no output claims a
space it is not in.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import nibabel as nib
import numpy as np

from bids_ketamine.config import DEFAULT_TEMPLATE, OFFLINE_TEMPLATE
from bids_ketamine.utils.atomic import atomic_write_nifti

LOGGER = logging.getLogger(__name__)

DATA_DIR = Path(__file__).parent / "data"


@dataclass(frozen=True)
class Template:
    """Files of one template space.

    Attributes
    ----------
    name : str
        The space label used in output names (``space-<name>``).
    t1w, gm, wm, csf, mask : Path
        T1-weighted image, tissue probability maps in [0, 1] and a brain mask, all on
        the same grid.
    source : str
        ``"templateflow"`` or ``"nilearn"`` (recorded in the outputs).
    """

    name: str
    t1w: Path
    gm: Path
    wm: Path
    csf: Path
    mask: Path
    source: str

    def provenance(self) -> dict[str, str]:
        """Which files were used, for sidecars and reports."""
        return {
            "Space": self.name,
            "Source": self.source,
            "T1w": str(self.t1w),
            "GM": str(self.gm),
            "WM": str(self.wm),
            "CSF": str(self.csf),
            "Mask": str(self.mask),
        }


def _nilearn_data_dir() -> Path:
    import nilearn.datasets

    return Path(nilearn.datasets.__file__).parent / "data"


def _cache_dir() -> Path:
    root = os.environ.get("BIDS_KETAMINE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "bids_ketamine"
    )
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


@lru_cache(maxsize=None)
def _nilearn_template() -> Template:
    """The MNI152 2009a symmetric template that nilearn ships, as probability maps.

    nilearn stores the maps as uint8; they are rescaled to [0, 1] once and cached.  CSF
    is what is left of the brain after GM and WM (nilearn ships no CSF map).
    """
    src = _nilearn_data_dir()
    out = _cache_dir() / "tpl-MNI152NLin2009aSym"
    out.mkdir(exist_ok=True)
    names = {
        "t1w": "tpl-MNI152NLin2009aSym_res-01_T1w.nii.gz",
        "gm": "tpl-MNI152NLin2009aSym_res-01_label-GM_probseg.nii.gz",
        "wm": "tpl-MNI152NLin2009aSym_res-01_label-WM_probseg.nii.gz",
        "csf": "tpl-MNI152NLin2009aSym_res-01_label-CSF_probseg.nii.gz",
        "mask": "tpl-MNI152NLin2009aSym_res-01_desc-brain_mask.nii.gz",
    }
    paths = {key: out / name for key, name in names.items()}
    if not all(p.exists() for p in paths.values()):
        t1 = nib.load(src / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz")
        gm_img = nib.load(src / "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz")
        wm_img = nib.load(src / "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz")

        def _unit(img):
            data = np.asarray(img.dataobj, dtype=np.float32)
            return data / max(float(data.max()), 1.0)

        gm, wm, t1w = _unit(gm_img), _unit(wm_img), _unit(t1)
        # Brain: where the T1w is brain-like or tissue is likely; CSF fills the rest of it.
        from scipy import ndimage

        tissue = (gm + wm) > 0.2
        brain = ndimage.binary_closing(tissue, iterations=3)
        brain = ndimage.binary_fill_holes(brain)
        csf = np.clip(1.0 - gm - wm, 0.0, 1.0) * brain
        affine = t1.affine
        header = nib.Nifti1Header()
        header.set_xyzt_units("mm")
        for key, data in (("t1w", t1w), ("gm", gm), ("wm", wm), ("csf", csf)):
            atomic_write_nifti(nib.Nifti1Image(data.astype(np.float32), affine, header), paths[key])
        atomic_write_nifti(nib.Nifti1Image(brain.astype(np.uint8), affine, header), paths["mask"])
    return Template(name=OFFLINE_TEMPLATE, source="nilearn", **paths)


def _templateflow_template(name: str) -> Template | None:
    """The template from TemplateFlow's local files, or None if they are not there."""
    home = os.environ.get("TEMPLATEFLOW_HOME")
    if not home:
        home = os.path.expanduser("~/.cache/templateflow")
    folder = Path(home) / f"tpl-{name}"
    if not folder.is_dir():
        return None

    def _find(*patterns: str) -> Path | None:
        for pattern in patterns:
            hits = sorted(folder.glob(pattern))
            hits = [h for h in hits if h.stat().st_size > 0]
            if hits:
                return hits[0]
        return None

    files = {
        "t1w": _find(f"tpl-{name}_res-01_T1w.nii.gz", f"tpl-{name}_res-1_T1w.nii.gz",
                     f"tpl-{name}_res-02_T1w.nii.gz", f"tpl-{name}_res-2_T1w.nii.gz"),
        "gm": _find(f"tpl-{name}_res-01_label-GM_probseg.nii.gz",
                    f"tpl-{name}_res-02_label-GM_probseg.nii.gz"),
        "wm": _find(f"tpl-{name}_res-01_label-WM_probseg.nii.gz",
                    f"tpl-{name}_res-02_label-WM_probseg.nii.gz"),
        "csf": _find(f"tpl-{name}_res-01_label-CSF_probseg.nii.gz",
                     f"tpl-{name}_res-02_label-CSF_probseg.nii.gz"),
        "mask": _find(f"tpl-{name}_res-01_desc-brain_mask.nii.gz",
                      f"tpl-{name}_res-02_desc-brain_mask.nii.gz"),
    }
    if any(v is None for v in files.values()):
        return None
    return Template(name=name, source="templateflow", **files)


def get_template(name: str = DEFAULT_TEMPLATE, *, allow_fallback: bool = True) -> Template:
    """Return the files of a template space, without downloading anything.

    Parameters
    ----------
    name : str
        A TemplateFlow template name, or ``"MNI152NLin2009aSym"`` for the nilearn files.
    allow_fallback : bool
        When TemplateFlow has no local files for ``name``, use the nilearn template
        (and say so in the log) instead of failing.

    Returns
    -------
    Template

    Raises
    ------
    FileNotFoundError
        If the template is not available offline and no fallback is allowed.
    """
    if name == OFFLINE_TEMPLATE:
        return _nilearn_template()
    found = _templateflow_template(name)
    if found is not None:
        return found
    if not allow_fallback:
        raise FileNotFoundError(
            f"template '{name}' has no local TemplateFlow files (TEMPLATEFLOW_HOME="
            f"{os.environ.get('TEMPLATEFLOW_HOME', 'unset')}); fetch them with "
            f"python -c \"import templateflow.api as t; t.get('{name}')\" where there is "
            f"network, or use --template {OFFLINE_TEMPLATE}"
        )
    LOGGER.warning(
        "No local TemplateFlow files for %s: using nilearn's %s instead (recorded in the outputs)",
        name,
        OFFLINE_TEMPLATE,
    )
    return _nilearn_template()


def template_grid(template: Template, resolution: float) -> nib.Nifti1Image:
    """An empty image on the template's field of view with ``resolution`` mm voxels.

    Used as the output grid of template-space maps (the template files are 1 mm; maps are
    written at the DWI's order of resolution).
    """
    ref = nib.load(template.mask)
    zooms = np.array(ref.header.get_zooms()[:3], dtype=float)
    shape = np.ceil(np.array(ref.shape[:3]) * zooms / resolution).astype(int)
    affine = ref.affine.copy()
    affine[:3, :3] = ref.affine[:3, :3] / zooms * resolution
    # keep the field of view centred on the template's
    centre_old = ref.affine @ np.r_[(np.array(ref.shape[:3]) - 1) / 2.0, 1.0]
    centre_new = affine @ np.r_[(shape - 1) / 2.0, 1.0]
    affine[:3, 3] += (centre_old - centre_new)[:3]
    return nib.Nifti1Image(np.zeros(tuple(shape), dtype=np.uint8), affine)
