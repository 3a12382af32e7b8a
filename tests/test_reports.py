"""Tests of the participant and group HTML reports, built from FABRICATED derivative trees.

The trees follow docs/outputs.md and docs/interfaces.md: small 4 mm images made from the
nilearn MNI template's tissue maps, a motion table, ROI tables computed from the
fabricated maps, and group tables with the contract's columns.  Some values are made bad
on purpose (a motion spike, a low-coverage ROI, an implausible MD) so that the report's
warnings can be checked against what was planted.
"""

from __future__ import annotations

import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from header_series import header_only_series

from bids_ketamine.cli.workflow import write_run_records
from bids_ketamine.config import KETAMINE7_ROIS, OFFLINE_TEMPLATE, Config
from bids_ketamine.dwi.tissue_stats import tissue_statistics
from bids_ketamine.workflows.base import init_bids_ketamine_wf

try:  # tests/ is not a package: pytest puts it on sys.path (rootdir-relative imports)
    from browser import chromium_available, open_in_chromium
except ImportError:  # pragma: no cover - when tests/ becomes a package
    from tests.browser import chromium_available, open_in_chromium

SUBJECT = "01"
SESSIONS = ("pre", "post")
ATLAS = "ketamine7"
#: MNI centres (mm) and radii of the fabricated ROIs.
ROI_SPHERES = {
    "BA10_L": ((-10.0, 60.0, 4.0), 9.0),
    "BA10_R": ((10.0, 60.0, 4.0), 9.0),
    "amygdala_L": ((-22.0, -4.0, -18.0), 6.0),
    "amygdala_R": ((22.0, -4.0, -18.0), 6.0),
    "hippocampus_L": ((-28.0, -22.0, -14.0), 6.0),
    "hippocampus_R": ((28.0, -22.0, -14.0), 6.0),
    "vACC": ((0.0, 32.0, -6.0), 6.0),
}
#: Planted problems of ses-post (checked in the warnings).
POST_MAX_FD = 3.1
POST_LOW_COVERAGE = ("amygdala_R", 0.62)
POST_BAD_MD = ("vACC", 1.72)
PRE_SIDECAR_WARNING = "3 voxels held NaN and were set to 0"
BVALS = np.array([0, 1000, 1000, 1000, 1000, 1000, 1000, 5, 2000, 2000, 2000, 1005])


# ----------------------------------------------------------------------------- fabrication
def _template_4mm():
    """The nilearn MNI template's tissue maps and mask averaged over 4x4x4 blocks (4 mm grid)."""
    from bids_ketamine.resources import get_template

    template = get_template(OFFLINE_TEMPLATE)
    out = {}
    for key in ("gm", "wm", "csf", "mask"):
        img = nib.load(getattr(template, key))
        data = np.asarray(img.dataobj, dtype=np.float32)
        shape = [n // 4 for n in data.shape]
        blocks = data[: shape[0] * 4, : shape[1] * 4, : shape[2] * 4].reshape(
            shape[0], 4, shape[1], 4, shape[2], 4).mean(axis=(1, 3, 5))
        # Block (i, j, k) covers voxels 4i..4i+3: its centre is voxel 4i + 1.5.
        affine = img.affine @ np.diag([4.0, 4.0, 4.0, 1.0])
        affine[:3, 3] = nib.affines.apply_affine(img.affine, [1.5, 1.5, 1.5])
        out[key] = nib.Nifti1Image((blocks > 0.5).astype(np.uint8) if key == "mask" else blocks, affine)
    return out


def _save(data: np.ndarray, affine: np.ndarray, path: Path, dtype=np.float32) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.Nifti1Image(np.asarray(data, dtype=dtype), affine).to_filename(path)
    return path


def _spheres(shape, affine) -> np.ndarray:
    ijk = np.indices(shape).reshape(3, -1).T
    xyz = nib.affines.apply_affine(affine, ijk).reshape(*shape, 3)
    labels = np.zeros(shape, dtype=np.int16)
    for index, name in enumerate(KETAMINE7_ROIS, start=1):
        centre, radius = ROI_SPHERES[name]
        labels[np.linalg.norm(xyz - np.asarray(centre), axis=-1) <= radius] = index
    return labels


def _roistats(maps: dict[str, np.ndarray], labels: np.ndarray, mask: np.ndarray) -> pd.DataFrame:
    """ROI statistics of the fabricated maps as the contract defines them."""
    rows = []
    for index, name in enumerate(KETAMINE7_ROIS, start=1):
        roi = labels == index
        kept = roi & mask & (maps["md"] <= 1.5)
        coverage = float((roi & mask).sum() / roi.sum())
        for param in ("fa", "md", "ad", "rd"):
            values = maps[param][kept]
            rows.append({"roi": name, "param": param, "mean": values.mean(),
                         "median": np.median(values), "std": values.std(ddof=1),
                         "n_voxels": int(kept.sum()), "coverage": coverage})
    return pd.DataFrame(rows)


def _motion(n_volumes: int, rng, spike: float | None) -> pd.DataFrame:
    table = pd.DataFrame({
        "trans_x": rng.normal(0, 0.05, n_volumes).cumsum(),
        "trans_y": rng.normal(0, 0.05, n_volumes).cumsum(),
        "trans_z": rng.normal(0, 0.05, n_volumes).cumsum(),
        "rot_x": rng.normal(0, 0.0005, n_volumes).cumsum(),
        "rot_y": rng.normal(0, 0.0005, n_volumes).cumsum(),
        "rot_z": rng.normal(0, 0.0005, n_volumes).cumsum(),
    })
    fd = np.r_[0.0, rng.uniform(0.05, 0.3, n_volumes - 1)]
    if spike is not None:
        fd[n_volumes // 2] = spike
    table["framewise_displacement"] = fd
    return table


def make_participant_tree(root: Path, *, full: bool = True, subject: str = SUBJECT) -> Path:
    """Fabricate OUTPUT_DIR for one subject.

    ``full``: two sessions with every file of docs/outputs.md.  Otherwise: one session
    (``acq-tilted``) with only the contract's tensor maps, dseg and roistats.
    """
    rng = np.random.default_rng(42)
    tpl = _template_4mm()
    affine = tpl["mask"].affine
    gm, wm, csf = (np.asarray(tpl[k].dataobj, dtype=float).clip(0, 1) for k in ("gm", "wm", "csf"))
    mask = np.asarray(tpl["mask"].dataobj) > 0
    labels = _spheres(mask.shape, affine)
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(json.dumps({
        "Name": "fabricated", "BIDSVersion": "1.9.0", "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "bids_ketamine", "Version": "0.1.0"}]}))
    sub_dir = root / f"sub-{subject}"
    sessions = SESSIONS if full else SESSIONS[:1]
    for number, session in enumerate(sessions):
        prefix = f"sub-{subject}_ses-{session}" + ("" if full else "_acq-tilted")
        dwi = sub_dir / f"ses-{session}" / "dwi"
        scale = 1.0 - 0.02 * number  # MD drops by 2 % at follow-up
        md = (0.8 * gm + 0.7 * wm + 3.0 * csf) * scale * mask
        fa = (0.12 * gm + 0.65 * wm + 0.03 * csf) * mask
        maps = {"md": md, "fa": fa, "ad": md * (1 + fa), "rd": md * (1 - fa / 2)}
        for param, data in maps.items():
            _save(data, affine, dwi / f"{prefix}_space-dwi_model-tensor_param-{param}_dwimap.nii.gz")
        _save(mask, affine, dwi / f"{prefix}_space-dwi_desc-brain_mask.nii.gz", np.uint8)
        _save(labels, affine, dwi / f"{prefix}_space-dwi_atlas-{ATLAS}_dseg.nii.gz", np.int16)
        pd.DataFrame({"index": range(1, 8), "name": KETAMINE7_ROIS}).to_csv(
            dwi / f"{prefix}_space-dwi_atlas-{ATLAS}_dseg.tsv", sep="\t", index=False)
        stats = _roistats(maps, labels, mask)
        if session == "post":
            roi, value = POST_LOW_COVERAGE
            stats.loc[stats["roi"] == roi, "coverage"] = value
            roi, value = POST_BAD_MD
            stats.loc[(stats["roi"] == roi) & (stats["param"] == "md"), "mean"] = value
        stats.to_csv(dwi / f"{prefix}_atlas-{ATLAS}_model-tensor_roistats.tsv", sep="\t",
                     index=False, float_format="%.6f")
        if not full:
            continue
        shared_md = (0.8 * gm + 0.7 * wm + 3.0 * csf) * 0.99 * mask  # the sessions' mean: one CSF rule
        tissue_statistics(maps, mask, tissue_fractions={"gm": gm, "wm": wm}, md=shared_md).to_csv(
            dwi / f"{prefix}_model-tensor_tissuestats.tsv", sep="\t", index=False, float_format="%.6f")
        for param in ("fa", "md"):
            _save(maps[param], affine,
                  dwi / f"{prefix}_space-{OFFLINE_TEMPLATE}_model-tensor_param-{param}_dwimap.nii.gz")
        b0 = (900 * gm + 600 * wm + 1500 * csf) * mask + rng.normal(0, 5, mask.shape).clip(0)
        _save(b0, affine, dwi / f"{prefix}_space-dwi_desc-b0_dwiref.nii.gz")
        signal = b0[..., None] * np.exp(-BVALS[None, None, None, :] * md[..., None] / 1000.0)
        _save(signal, affine, dwi / f"{prefix}_space-dwi_desc-preproc_dwi.nii.gz", np.int16)
        (dwi / f"{prefix}_space-dwi_desc-preproc_dwi.bval").write_text(" ".join(map(str, BVALS)) + "\n")
        bvecs = rng.normal(size=(3, BVALS.size))
        bvecs /= np.linalg.norm(bvecs, axis=0)
        bvecs[:, BVALS <= 50] = 0
        np.savetxt(dwi / f"{prefix}_space-dwi_desc-preproc_dwi.bvec", bvecs, fmt="%.6f")
        (dwi / f"{prefix}_space-dwi_desc-preproc_dwi.json").write_text(json.dumps({
            "Sources": [f"/data/bids/sub-{subject}/ses-{session}/dwi/sub-{subject}_ses-{session}_dwi.nii.gz"],
            "NumberOfVolumes": int(BVALS.size),
            "Options": {"denoise": "mppca", "degibbs": True},
            "Warnings": [PRE_SIDECAR_WARNING] if session == "pre" else [],
        }, indent=2))
        (dwi / f"{prefix}_space-dwi_model-tensor_dwimap.json").write_text(json.dumps({
            "Model": "tensor", "FitMethod": "WLS",
            "VolumesUsed": [int(i) for i in np.flatnonzero(BVALS <= 1500)]}))
        noise = (20 + 0.1 * np.abs(np.indices(mask.shape)[0] - mask.shape[0] / 2)) * mask
        _save(noise, affine, dwi / f"{prefix}_space-dwi_model-mppca_param-noise_dwimap.nii.gz")
        _motion(BVALS.size, rng, POST_MAX_FD if session == "post" else None).to_csv(
            dwi / f"{prefix}_desc-motion_timeseries.tsv", sep="\t", index=False)
        (dwi / f"{prefix}_from-dwi_to-midpoint_mode-image_xfm.txt").write_text(
            "\n".join(" ".join(map(str, row)) for row in np.eye(4)))
    if full:
        mid_b0 = (900 * gm + 600 * wm + 1500 * csf) * mask
        _save(mid_b0, affine, sub_dir / "dwi" / f"sub-{subject}_space-midpoint_desc-b0_dwiref.nii.gz")
        # the run's records (options, methods text) written as a run writes them, from the graph
        # built for small header-only inputs
        raw = root.parent / f"raw-{subject}"
        config = Config(bids_dir=raw, output_dir=root, analysis_level="participant", work_dir=root.parent / "work",
                        template=OFFLINE_TEMPLATE, degibbs=True)
        series = [header_only_series(raw, session, subject) for session in sessions]
        workflow, _, _ = init_bids_ketamine_wf(config, {subject: series})
        write_run_records(workflow, config, [subject])
    return root


# ----------------------------------------------------------------------------- HTML reading
class _PageParser(HTMLParser):
    """Collects img sources, links, section ids, ROI-table cells and warning items."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.links: list[str] = []
        self.sections: list[str] = []
        self.tables: dict[str, list[dict[str, tuple[str, str]]]] = {}
        self.warnings: list[str] = []
        self._table: str | None = None
        self._row: dict[str, tuple[str, str]] | None = None
        self._cell: tuple[str, str] | None = None
        self._text: list[str] = []
        self._in_warning = False
        self._in_warning_list = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        if tag in ("a", "link") and "href" in attrs:
            self.links.append(attrs["href"])
        if tag == "script" and "src" in attrs:
            self.links.append(attrs["src"])
        if tag == "section":
            self.sections.append(attrs.get("id", ""))
        if tag == "table" and attrs.get("id"):
            self._table = attrs["id"]
            self.tables[self._table] = []
        if tag == "tr" and self._table:
            self._row = {}
        if tag == "td" and self._row is not None:
            self._cell = (attrs.get("data-col", ""), attrs.get("data-sort", ""))
            self._text = []
        if tag == "li" and self._in_warning_list:
            self._in_warning = True
            self._text = []
        if tag == "ul" and attrs.get("id") == "warning-list":
            self._in_warning_list = True

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None and self._row is not None:
            self._row[self._cell[0]] = (self._cell[1], "".join(self._text).strip())
            self._cell = None
        if tag == "tr" and self._row is not None and self._table:
            if self._row:
                self.tables[self._table].append(self._row)
            self._row = None
        if tag == "table":
            self._table = None
        if tag == "li" and self._in_warning:
            self.warnings.append("".join(self._text).strip())
            self._in_warning = False
        if tag == "ul":
            self._in_warning_list = False

    def handle_data(self, data):
        self._text.append(data)


def parse_page(path: Path) -> _PageParser:
    parser = _PageParser()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


def assert_self_contained(page: Path) -> None:
    """Every image exists, every link is relative and stays in the output folder."""
    parsed = parse_page(page)
    assert parsed.images, f"{page} has no images"
    text = page.read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", text, re.I), \
        "the page references a remote resource"
    for url in parsed.images + [u for u in parsed.links if not u.startswith("#")]:
        assert "://" not in url and not url.startswith("/"), f"absolute link {url}"
        from urllib.parse import unquote

        target = (page.parent / unquote(url)).resolve()
        assert target.is_file(), f"{url} in {page.name} points to a missing file"


# ----------------------------------------------------------------------------- participant
@pytest.fixture(scope="module")
def participant_tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("derivatives")
    make_participant_tree(root, full=True)
    make_participant_tree(root, full=False, subject="02")
    return root


@pytest.fixture(scope="module")
def participant_reports(participant_tree) -> dict[str, Path]:
    from bids_ketamine.reports import build_participant_report

    return {
        "01": build_participant_report(participant_tree, "sub-01"),
        "02": build_participant_report(participant_tree, "02"),
    }


def test_participant_report_sections(participant_reports, participant_tree):
    page = participant_reports["01"]
    assert page == participant_tree / "sub-01.html"
    parsed = parse_page(page)
    assert parsed.sections == [
        "summary", "warnings", "series-ses-post", "series-ses-pre", "anatomy", "longitudinal", "methods",
        "about",
    ]
    text = page.read_text()
    # Gradient scheme from the .bval: 995-1005 and b=5 (<= the 50 threshold) grouped.
    n_b0 = int((BVALS <= 50).sum())
    n_1000 = int(((BVALS > 50) & (np.abs(BVALS - 1000) <= 25)).sum())
    assert f"b=0: {n_b0}, b=1000: {n_1000}, b=2000: 3" in text
    assert f"{int((BVALS <= 1500).sum())} volumes" in text  # VolumesUsed of the tensor sidecar
    assert ">sub-01_ses-pre_dwi.nii.gz<" in text  # source file name from the sidecar
    # Options from config.json.
    assert ">degibbs</th><td>True<" in text and ">fit_method</th><td>wls<" in text
    # One figure per expected view, all under sub-01/figures.
    for what in ("noise", "motion", "brainmask", "fa", "md"):
        for session in SESSIONS:
            assert f"sub-01/figures/sub-01_ses-{session}_desc-{what}_dwi.png" in parsed.images
    assert "sub-01/figures/sub-01_space-midpoint_desc-b0_dwi.png" in parsed.images
    assert f"sub-01/figures/sub-01_space-{OFFLINE_TEMPLATE}_desc-sessions_dwi.png" in parsed.images
    assert f"sub-01/figures/sub-01_ses-pre_atlas-{ATLAS}_desc-rois_dwi.png" in parsed.images


def test_roi_table_equals_tsv(participant_reports, participant_tree):
    parsed = parse_page(participant_reports["01"])
    for session in SESSIONS:
        tsv = participant_tree / f"sub-01/ses-{session}/dwi/sub-01_ses-{session}_atlas-{ATLAS}_model-tensor_roistats.tsv"
        expected = pd.read_csv(tsv, sep="\t")
        rows = {row["roi"][1]: row for row in parsed.tables[f"roi-table-ses-{session}-{ATLAS}"]}
        assert list(rows) == list(KETAMINE7_ROIS)
        for record in expected.to_dict("records"):
            row = rows[record["roi"]]
            value, shown = row[f"{record['param']}_mean"]
            assert float(value) == pytest.approx(record["mean"], rel=1e-12)
            assert shown == f"{record['mean']:.3f}"
            if record["param"] == "md":
                assert float(row["md_median"][0]) == pytest.approx(record["median"], rel=1e-12)
                assert float(row["md_std"][0]) == pytest.approx(record["std"], rel=1e-12)
                assert int(row["n_voxels"][1]) == record["n_voxels"]
                assert row["coverage"][1] == f"{record['coverage']:.3f}"


def test_whole_brain_md_table(participant_reports, participant_tree):
    """Each session's tissue medians as in its table, and their share of the change: MD drops by
    2 % at follow-up in every tissue, so each session lies 1/0.99 - 1 = 1.0101 % from the mean."""
    rows = {row["series"][1]: row for row in parse_page(participant_reports["01"]).tables["tissue-table"]}
    assert sorted(rows) == sorted(f"ses-{session}" for session in SESSIONS)
    for session in SESSIONS:
        tsv = participant_tree / f"sub-01/ses-{session}/dwi/sub-01_ses-{session}_model-tensor_tissuestats.tsv"
        md = pd.read_csv(tsv, sep="\t").query("param == 'md'").set_index("tissue")["median"]
        sign = 1 if session == "pre" else -1
        for tissue in ("brain", "wm", "gm"):
            assert float(rows[f"ses-{session}"][tissue][0]) == pytest.approx(md[tissue], rel=1e-12)
            assert float(rows[f"ses-{session}"][f"{tissue}_relative"][0]) == pytest.approx(sign * 1.0101, abs=2e-4)
    assert "tissue-table" not in parse_page(participant_reports["02"]).tables  # no tissue tables there


def test_warnings_are_the_planted_problems(participant_reports):
    warnings = parse_page(participant_reports["01"]).warnings
    post = [w for w in warnings if w.startswith("ses-post")]
    pre = [w for w in warnings if w.startswith("ses-pre")]
    assert len(post) == 3, post
    assert any(f"maximum framewise displacement {POST_MAX_FD:.2f} mm" in w for w in post)
    assert any(f"ROI {POST_LOW_COVERAGE[0]} has coverage {POST_LOW_COVERAGE[1]:.2f}" in w for w in post)
    assert any(f"ROI {POST_BAD_MD[0]} mean MD {POST_BAD_MD[1]:.3f}" in w for w in post)
    assert pre == [f"ses-pre: {PRE_SIDECAR_WARNING}"]


def test_participant_report_is_self_contained_and_movable(participant_reports, participant_tree, tmp_path):
    for page in participant_reports.values():
        assert_self_contained(page)
    moved = tmp_path / "moved"
    shutil.copytree(participant_tree, moved)
    assert_self_contained(moved / "sub-01.html")


def test_participant_report_with_missing_optional_files(participant_reports):
    page = participant_reports["02"]
    parsed = parse_page(page)
    assert "series-ses-pre_acq-tilted" in parsed.sections
    text = page.read_text()
    for what in ("Noise map", "Motion table", "Brain mask outline on the mean b=0",
                 "FA in template space", "Options of the run"):
        assert f"{what}: not available" in text, what
    assert "Single session: no within-subject midpoint space" in text
    # The ROI table is still there and equals its TSV.
    assert len(parsed.tables[f"roi-table-ses-pre_acq-tilted-{ATLAS}"]) == len(KETAMINE7_ROIS)


def test_methods_cite_the_tools(participant_reports):
    text = participant_reports["01"].read_text()
    methods = text[text.index('id="methods"'):text.index('id="about"')]
    for author in ("Garyfallidis", "Gorgolewski", "Brett", "Abraham", "Yarkoni", "Seabold",
                   "Veraart", "Kellner", "Avants", "Fonov"):
        assert author in methods, author
    # Patch2Self was not used: not cited.
    assert "Fadnavis" not in methods


def test_methods_are_the_text_of_the_graph_that_ran(tmp_path):
    """The Methods section shows the recorded methods text of the workflow built (its options),
    citations numbered; without the record it says so."""
    from bids_ketamine.reports import build_participant_report

    root = make_participant_tree(tmp_path / "derivatives", full=True, subject="03")
    text = build_participant_report(root, "03").read_text()
    methods = text[text.index('id="methods"'):text.index('id="about"')]
    assert f"MD above {Config.default('csf_md_threshold'):g} µm²/ms" in methods
    assert f"was below {Config.default('gm_threshold'):g} were excluded as not grey matter" in methods
    assert "The voxel selection was shared by the participant" in methods
    assert "Gibbs ringing" in methods and "[@" not in methods
    (root / "sub-03" / "log" / "methods.md").unlink()
    text = build_participant_report(root, "03").read_text()
    methods = text[text.index('id="methods"'):text.index('id="about"')]
    assert "Methods text: not available" in methods and "sub-03/log/methods.md" in methods


def test_registration_check_without_template_files(tmp_path, monkeypatch):
    """A template with no local files: FA shown alone, never another space's outline."""
    from bids_ketamine.reports import build_participant_report

    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(tmp_path / "empty-templateflow"))
    root = make_participant_tree(tmp_path / "out", full=False, subject="03")
    dwi = root / "sub-03" / "ses-pre" / "dwi"
    shutil.copy(dwi / "sub-03_ses-pre_acq-tilted_space-dwi_model-tensor_param-fa_dwimap.nii.gz",
                dwi / "sub-03_ses-pre_acq-tilted_space-MNI152NLin6Asym_model-tensor_param-fa_dwimap.nii.gz")
    page = build_participant_report(root, "03")
    text = page.read_text()
    assert "The files of template MNI152NLin6Asym are not available offline" in text
    assert "sub-03/figures/sub-03_ses-pre_acq-tilted_space-MNI152NLin6Asym_desc-fa_dwi.png" in \
        parse_page(page).images
    assert "desc-registration" not in text
    assert_self_contained(page)


def test_atlas_references_follow_its_sources():
    from bids_ketamine.reports.references import atlas_citations, atlas_reference_keys

    provenance = {"ROIs": [
        {"name": "BA10_L", "source_atlas": "Talairach Brodmann areas (FSL 5.0)"},
        {"name": "amygdala_L", "source_atlas": "Harvard-Oxford subcortical (FSL 5.0)",
         "reference": "Somebody A (2001). A paper. J Test 1:1."}],
        "ReferenceCoordinates": {"vACC": {"source": "not a citation"}}}
    assert atlas_reference_keys(provenance) == [
        "desikan2006", "makris2006", "frazier2005", "goldstein2007", "lancaster2000",
        "lancaster2007"]
    assert atlas_citations(provenance) == ["Somebody A (2001). A paper. J Test 1:1."]
    assert atlas_reference_keys({"ROIs": [{"source_atlas": "my own drawing"}]}) == []


def test_extent_cuts_span_the_bright_voxels_with_margins():
    from bids_ketamine.reports.figures import extent_cuts

    data = np.full((20, 30, 40), 0.01)  # a dim background (below 5 % of the bright end)
    data[5:15, 10:20, 8:28] = 1.0
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [-10.0, -20.0, -30.0]
    image = nib.Nifti1Image(data, affine)
    # z voxels 8..27 -> -14..24 mm; 12 % of the 38 mm span left out at each end
    assert extent_cuts(image, 3, "z") == pytest.approx([-9.4, 5.0, 19.4])
    # x voxels 5..14 -> 0..18 mm
    assert extent_cuts(image, 2, "x") == pytest.approx([2.2, 15.8])
    assert extent_cuts(nib.Nifti1Image(np.zeros((4, 4, 4)), affine), 3) == []


def test_participant_report_unknown_subject(tmp_path):
    from bids_ketamine.reports import build_participant_report

    with pytest.raises(FileNotFoundError, match="run the participant level for sub-99"):
        build_participant_report(tmp_path, "sub-99")


# ----------------------------------------------------------------------------- group
ARMS = {"ketamine": 10, "saline": 6}
OUTCOMES = ("madrs", "qids_sr")
GROUP_EXCLUDED = [
    {"participant_id": "sub-17", "reason": "no value in column 'group' of participants.tsv",
     "analyses": ["all"], "params": ["all"], "rois": ["all"], "outcomes": ["all"]},
    {"participant_id": "sub-05", "reason": "ROI coverage 0.62 below --min-coverage 0.8",
     "analyses": ["models (change)"], "params": ["md"], "rois": ["amygdala_R"],
     "outcomes": ["madrs", "qids_sr"]},
]


def _clinical(rng) -> pd.DataFrame:
    rows = []
    number = 0
    for arm, count in ARMS.items():
        for _ in range(count):
            number += 1
            madrs = rng.integers(22, 40)
            qids = rng.integers(12, 24)
            gain = 0.55 if arm == "ketamine" else 0.15
            rows.append({
                "participant_id": f"sub-{number:02d}", "group": arm,
                "madrs_baseline": float(madrs),
                "madrs_followup": float(max(0, round(madrs * (1 - gain) + rng.normal(0, 4)))),
                "qids_sr_baseline": float(qids),
                "qids_sr_followup": float(max(0, round(qids * (1 - gain) + rng.normal(0, 3)))),
            })
    frame = pd.DataFrame(rows)
    for outcome in OUTCOMES:
        frame[f"{outcome}_change"] = frame[f"{outcome}_followup"] - frame[f"{outcome}_baseline"]
    return frame


def _fit_models(change: pd.DataFrame) -> pd.DataFrame:
    """Interaction and within-arm slope models with statsmodels, BH-FDR per term."""
    import statsmodels.formula.api as smf
    from statsmodels.stats.multitest import multipletests

    rows = []
    for (roi, param), data in change.groupby(["roi", "param"], sort=False):
        data = data.assign(treatment=(data["group"] == "ketamine").astype(float),
                           md_change=data["change"])
        for outcome in OUTCOMES:
            specs = [("interaction", data,
                      f"{outcome}_change ~ treatment + md_change + treatment:md_change + {outcome}_baseline")]
            specs += [(f"slope_{arm}", data[data["group"] == arm],
                       f"{outcome}_change ~ md_change + {outcome}_baseline") for arm in ARMS]
            for model, sample, formula in specs:
                fit = smf.ols(formula, data=sample).fit()
                conf = fit.conf_int()
                for term in fit.params.index:
                    rows.append({
                        "model": model, "roi": roi, "param": param, "outcome": outcome,
                        "term": "intercept" if term == "Intercept" else term,
                        "estimate": fit.params[term], "std_error": fit.bse[term],
                        "statistic": fit.tvalues[term], "p_value": fit.pvalues[term],
                        "conf_low": conf.loc[term, 0], "conf_high": conf.loc[term, 1],
                        "n_obs": int(fit.nobs), "measure": "change", "cov_type": "nonrobust",
                        "note": np.nan,
                    })
    models = pd.DataFrame(rows)
    models["p_fdr"] = np.nan
    for _, index in models.groupby(["model", "param", "measure", "term"]).groups.items():
        models.loc[index, "p_fdr"] = multipletests(models.loc[index, "p_value"], method="fdr_bh")[1]
    columns = ["model", "roi", "param", "outcome", "term", "estimate", "std_error", "statistic",
               "p_value", "p_fdr", "conf_low", "conf_high", "n_obs", "measure", "cov_type", "note"]
    return models[columns]


def _response_rates(clinical: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for outcome, remission in (("madrs", 10.0), ("qids_sr", 5.0)):
        for arm, data in clinical.groupby("group"):
            improvement = 100 * (data[f"{outcome}_baseline"] - data[f"{outcome}_followup"]) \
                / data[f"{outcome}_baseline"]
            response = improvement >= 50
            remits = data[f"{outcome}_followup"] <= remission
            rows.append({"outcome": outcome, "group": arm, "n": len(data),
                         "pctimprovement_mean": improvement.mean(),
                         "pctimprovement_sd": improvement.std(ddof=1),
                         "n_response": int(response.sum()), "response_rate": response.mean(),
                         "n_remission_evaluable": len(data), "n_remission": int(remits.sum()),
                         "remission_rate": remits.mean()})
    return pd.DataFrame(rows)


def _plot(path: Path, kind: str) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.8, 4.0))
    ax = fig.add_subplot()
    ax.plot([0, 1, 2], [1, 0, 2], "o-" if kind == "scatter" else "s")
    ax.set_title(path.stem, fontsize=8)
    fig.savefig(path, dpi=60)
    pd.DataFrame({"x": [0, 1, 2], "y": [1, 0, 2]}).to_csv(path.with_suffix(".tsv"), sep="\t", index=False)


def make_group_tree(root: Path, *, full: bool = True) -> Path:
    """Fabricate OUTPUT_DIR/group: change.tsv and models.tsv, and with ``full`` the rest."""
    rng = np.random.default_rng(7)
    clinical = _clinical(rng)
    group = root / "group"
    group.mkdir(parents=True, exist_ok=True)
    pieces = []
    for roi in KETAMINE7_ROIS:
        baseline = rng.normal(0.82, 0.04, len(clinical))
        change = rng.normal(-0.01, 0.015, len(clinical)) + 0.001 * clinical["madrs_change"].to_numpy()
        pieces.append(clinical.assign(roi=roi, param="md", baseline=baseline,
                                      followup=baseline + change, change=change))
    change = pd.concat(pieces, ignore_index=True)
    columns = ["participant_id", "group", "roi", "param", "baseline", "followup", "change"]
    columns += [f"{o}_{w}" for o in OUTCOMES for w in ("baseline", "followup", "change")]
    change[columns].to_csv(group / "change.tsv", sep="\t", index=False)
    _fit_models(change).to_csv(group / "models.tsv", sep="\t", index=False)
    if not full:
        return root
    _response_rates(clinical).to_csv(group / "response.tsv", sep="\t", index=False)
    features = [("md_change", roi) for roi in KETAMINE7_ROIS] + [("treatment", "n/a")]
    features += [("treatment:md_change", roi) for roi in KETAMINE7_ROIS]
    pd.DataFrame({
        "param": "md", "outcome": "madrs", "roi": [r for _, r in features],
        "term": [t for t, _ in features],
        "std_beta": [0.0 if i % 3 else 0.21 for i in range(len(features))],
        "selection_frequency": np.linspace(0.1, 1.0, len(features)),
        "r2_oos": 0.137, "p_permutation": 0.0396, "n_obs": 16, "n_permutations": 200,
        "cv_outer": "leave-one-out", "cv_inner_folds": 5, "alpha": 0.0123, "l1_ratio": 0.5,
    }).to_csv(group / "prediction.tsv", sep="\t", index=False)
    (group / "models.json").write_text(json.dumps({
        "software": {"bids_ketamine": "0.1.0", "statsmodels": "0.15"},
        "roi_value": {"statistic": "roi_gm_weighted_median", "reason": "the default"},
        "arms": {"column": "group", "treatment": "ketamine", "control": "saline",
                 "n": dict(ARMS)},
        "sessions": {"rule": "acq_time", "pairs": [["pre", "post"]]},
        "outcomes": list(OUTCOMES),
        "formulas": {"interaction/md/madrs_change":
                     "madrs_change ~ treatment + md_change + treatment:md_change + madrs_baseline"},
        "fdr": {"method": "Benjamini-Hochberg", "family": "all ROIs x outcomes"},
        "response": {"response_threshold_percent": 50.0,
                     "remission_thresholds": {"madrs": 10.0, "qids_sr": 5.0}},
        "prediction": [{"param": "md", "outcome": "madrs", "n_obs": 16, "r2_oos": 0.137},
                       {"param": "md", "outcome": "qids_sr", "n_obs": 8,
                        "note": "skipped: 8 participants with complete data (at least 10 needed)"}],
        "excluded": GROUP_EXCLUDED,
    }, indent=2))
    figures_dir = group / "figures"
    figures_dir.mkdir(exist_ok=True)
    _plot(figures_dir / "forest_param-md_term-interaction.png", "forest")
    for outcome in OUTCOMES:
        for roi in ("BA10_L", "amygdala_L"):
            _plot(figures_dir / f"scatter_param-md_outcome-{outcome}_roi-{roi}.png", "scatter")
    return root


@pytest.fixture(scope="module")
def group_reports(tmp_path_factory) -> dict[str, Path]:
    from bids_ketamine.reports import build_group_report

    full = make_group_tree(tmp_path_factory.mktemp("group_full"), full=True)
    minimal = make_group_tree(tmp_path_factory.mktemp("group_minimal"), full=False)
    return {"full": build_group_report(full), "minimal": build_group_report(minimal)}


def test_group_report_sections(group_reports):
    page = group_reports["full"]
    assert page.name == "report.html" and page.parent.name == "group"
    assert parse_page(page).sections == [
        "cohort", "outcomes", "response", "models", "figures", "prediction", "methods"]


def test_group_cohort(group_reports):
    page = group_reports["full"]
    parsed = parse_page(page)
    change = pd.read_csv(page.parent / "change.tsv", sep="\t")
    expected = change.drop_duplicates("participant_id")["group"].value_counts()
    shown = {row["arm"][1]: int(row["n"][1]) for row in parsed.tables["cohort-table"]}
    assert shown == {arm: int(n) for arm, n in expected.items()} == ARMS
    excluded = {(row["participant_id"][1], row["reason"][1])
                for row in parsed.tables["exclusions-table"]}
    assert excluded == {(e["participant_id"], e["reason"]) for e in GROUP_EXCLUDED}


def test_group_outcome_and_response_tables(group_reports):
    page = group_reports["full"]
    parsed = parse_page(page)
    people = pd.read_csv(page.parent / "change.tsv", sep="\t").drop_duplicates("participant_id")
    rows = {(r["outcome"][1], r["arm"][1]): r for r in parsed.tables["outcome-table"]}
    for (outcome, arm), row in rows.items():
        values = people.loc[people["group"] == arm, f"{outcome}_change"]
        assert row["change"][1] == f"{values.mean():.2f} ± {values.std(ddof=1):.2f}"
    assert len(rows) == len(OUTCOMES) * len(ARMS)
    response = pd.read_csv(page.parent / "response.tsv", sep="\t")
    shown = {(r["outcome"][1], r["arm"][1]): r["responders"][1] for r in parsed.tables["response-table"]}
    for record in response.to_dict("records"):
        assert shown[(record["outcome"], record["group"])] == (
            f"{record['n_response']}/{record['n']} ({100 * record['response_rate']:.0f} %)")


def test_group_model_table(group_reports):
    page = group_reports["full"]
    parsed = parse_page(page)
    models = pd.read_csv(page.parent / "models.tsv", sep="\t")
    expected = models[(models["model"] == "interaction") & (models["term"] == "treatment:md_change")]
    rows = parsed.tables["interaction-table"]
    assert len(rows) == len(expected) == len(KETAMINE7_ROIS) * len(OUTCOMES)
    by_key = {(r["roi"][1], r["outcome"][1]): r for r in rows}
    for record in expected.to_dict("records"):
        row = by_key[(record["roi"], record["outcome"])]
        assert "term" not in row and "model" not in row  # the same in every row: said once
        for key in ("estimate", "p_value", "p_fdr", "conf_low"):
            if key in row:
                assert float(row[key][0]) == pytest.approx(record[key], rel=1e-9)
        assert float(row["p_fdr"][0]) >= float(row["p_value"][0])
    assert "Term: <code>treatment:md_change</code>" in page.read_text()
    # Rows are grouped by outcome, ROIs in the contract's order.
    assert [r["roi"][1] for r in rows[: len(KETAMINE7_ROIS)]] == list(KETAMINE7_ROIS)
    # The other rows hold every remaining term.
    assert len(parsed.tables["all-terms-table"]) == len(models) - len(expected)


def test_group_prediction_and_figures(group_reports):
    page = group_reports["full"]
    parsed = parse_page(page)
    summary = {r["outcome"][1]: r for r in parsed.tables["prediction-summary"]}
    assert summary["madrs"]["r2_oos"][1] == "0.137"
    assert summary["madrs"]["p_permutation"][1] == "0.040"
    assert "skipped: 8 participants" in summary["qids_sr"]["note"][1]
    assert "figures/forest_param-md_term-interaction.png" in parsed.images
    assert sum(src.startswith("figures/scatter_") for src in parsed.images) == 4


def test_group_methods_name_the_roi_value(group_reports):
    text = group_reports["full"].read_text()
    methods = text[text.index('id="methods"'):]
    assert "<h3>ROI value of each session</h3>" in methods
    assert "roi_gm_weighted_median" in methods and "the default" in methods


def test_group_report_self_contained(group_reports):
    for page in group_reports.values():
        assert_self_contained(page)


def test_group_report_with_missing_optional_files(group_reports):
    text = group_reports["minimal"].read_text()
    for what in ("Exclusions", "Response and remission rates", "Group figures",
                 "Prediction results", "Options and software versions"):
        assert f"{what}: not available" in text, what
    parsed = parse_page(group_reports["minimal"])
    # Arms still come from change.tsv, and the models table is complete.
    assert {row["arm"][1]: int(row["n"][1]) for row in parsed.tables["cohort-table"]} == ARMS
    assert len(parsed.tables["interaction-table"]) == len(KETAMINE7_ROIS) * len(OUTCOMES)


def test_group_report_without_group_outputs(tmp_path):
    from bids_ketamine.reports import build_group_report

    with pytest.raises(FileNotFoundError, match="run 'bids-ketamine BIDS_DIR"):
        build_group_report(tmp_path)


# ----------------------------------------------------------------------------- browser
@pytest.mark.browser
@pytest.mark.parametrize("which", ["sub-01", "sub-02", "group-full", "group-minimal"])
def test_reports_in_chromium(which, participant_reports, group_reports, tmp_path):
    reason = chromium_available()
    if reason is not None:
        pytest.skip(reason)
    page = {"sub-01": participant_reports["01"], "sub-02": participant_reports["02"],
            "group-full": group_reports["full"], "group-minimal": group_reports["minimal"]}[which]
    folder = page.parent.resolve()
    loaded = open_in_chromium(page, tmp_path / f"{which}.png")
    assert loaded.title.startswith("bids_ketamine")
    assert len(loaded.images) == len(parse_page(page).images) > 0
    for image in loaded.images:
        assert image["naturalWidth"] > 0, f"{image['src']} did not load"
    requested = loaded.resources + [image["src"] for image in loaded.images]
    assert any(url.endswith(".png") for url in requested)
    for url in requested:
        assert url.startswith("file://"), f"request outside the output folder: {url}"
        from urllib.parse import unquote, urlparse

        path = Path(unquote(urlparse(url).path)).resolve()
        assert path.is_relative_to(folder), f"{path} is outside {folder}"
    assert loaded.screenshot.is_file() and loaded.screenshot.stat().st_size > 10_000
