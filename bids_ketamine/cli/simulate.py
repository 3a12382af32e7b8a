"""``bids-ketamine-simulate``: write a simulated two-arm trial as a BIDS dataset.

Errors a user can fix (a non-empty output folder without ``--overwrite``, bad numbers) are
printed as one line (``bids-ketamine-simulate: error: ...``) and exit with status 2, without a
traceback.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Sequence

from bids_ketamine import __version__
from bids_ketamine.cli.arg_types import as_number, positive_int
from bids_ketamine.simulate.session import MOTION_SAMPLING
from bids_ketamine.simulate.trial import TrialDesign
from bids_ketamine.utils.labels import bare_label

PROG = "bids-ketamine-simulate"


class _OneLineParser(argparse.ArgumentParser):
    """An argparse parser whose errors are one line on stderr (exit status 2)."""

    def error(self, message):  # noqa: D401 - argparse API
        self.exit(2, f"{self.prog}: error: {message}\n")


def _ratio(text: str) -> tuple:
    parts = text.replace("/", ":").split(":")
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a ratio K:S such as 2:1") from None
    if len(values) != 2 or min(values) < 0 or sum(values) <= 0:
        raise argparse.ArgumentTypeError(f"'{text}' is not a ratio K:S of non-negative numbers, such as 2:1")
    return values


def _finite(text: str) -> float:
    value = as_number(text)
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"'{text}' is not a finite number")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``bids-ketamine-simulate``."""
    parser = _OneLineParser(
        prog=PROG,
        description="Simulate a two-arm (ketamine vs saline) DWI trial with known ground truth "
                    "and write it as a BIDS dataset (truth in sourcedata/simulation/).",
    )
    parser.add_argument("output_dir", metavar="OUTPUT_BIDS_DIR", type=Path)
    parser.add_argument("--n-subjects", type=positive_int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--preset", choices=("demo", "small", "realistic"), default="small",
                        help="demo: 4 mm, 3 b=0 + 12 directions; small: 3 mm, 6 b=0 + 30 "
                             "directions; realistic: 2 mm, 6 b=0 + 64 directions (b=1000)")
    parser.add_argument("--design", choices=("two-arm", "repeated-infusion"), default="two-arm",
                        help="two-arm: the DWI trial (default); repeated-infusion: an open-label "
                             "study of 4 infusions with a plasma biomarker before and 1.75 h "
                             "after the first and MADRS at baseline, after the fourth infusion "
                             "and at 12 months (clinical tables only, no imaging)")
    parser.add_argument("--null", action="store_true",
                        help="no imaging change and no imaging-outcome relation (repeated-infusion: "
                             "no biomarker-improvement relation)")
    parser.add_argument("--snr", type=_finite, default=None,
                        help="b=0 SNR in grey matter (default: 50 small, 30 realistic)")
    parser.add_argument("--motion", type=_finite, default=None,
                        help="scale of per-volume motion (SD, mm and degrees; 0 disables; default 0.3)")
    parser.add_argument("--md-change-ketamine", nargs=2, type=_finite, metavar=("MEAN", "SD"),
                        default=(-3.0, 2.0), help="percent MD change per follow-up visit (default -3 2)")
    parser.add_argument("--md-change-saline", nargs=2, type=_finite, metavar=("MEAN", "SD"),
                        default=(0.0, 1.0), help="percent MD change per follow-up visit (default 0 1)")
    parser.add_argument("--arm-ratio", type=_ratio, default=(2.0, 1.0), metavar="K:S",
                        help="ketamine:saline allocation (default 2:1)")
    parser.add_argument("--sessions", nargs="+", default=["pre", "post"], metavar="LABEL",
                        help="session labels, baseline first; with more than two the MD change of "
                             "each visit accumulates (default: pre post)")
    parser.add_argument("--visit-interval-hours", type=_finite, default=24.0,
                        help="time between consecutive sessions (default 24)")
    parser.add_argument("--roi-correlation", type=_finite, default=0.7,
                        help="correlation of a subject's MD changes across ROIs (default 0.7)")
    parser.add_argument("--orientation", choices=("LAS", "RAS"), default="LAS",
                        help="voxel axes of the written images (default LAS)")
    parser.add_argument("--oblique", type=_finite, default=0.0, metavar="DEG",
                        help="tilt of the slab about left-right, degrees (default 0)")
    parser.add_argument("--atlas-image", type=Path, default=None,
                        help="ROI labels 1..7 on the template grid (default: the app's ketamine7 atlas)")
    parser.add_argument("--effect-model", choices=("roi", "blobs"), default="roi",
                        help="roi: the MD change fills each atlas ROI's grey matter (default); "
                             "blobs: smooth blobs off the ROI centres plus a gradient, truth = "
                             "ideal change of any label image (docs/simulation.md)")
    parser.add_argument("--scanner-drift", type=_finite, default=0.0, metavar="PCT",
                        help="SD of a global drift of every diffusivity at each follow-up session "
                             "(percent; default 0)")
    parser.add_argument("--motion-sampling", choices=MOTION_SAMPLING, default=TrialDesign.motion_sampling,
                        help="how a volume shows the moved head: resample the static head's image "
                             "(cubic B-spline; default) or sample the anatomy where the head is, as a "
                             "scanner does (exact; slower, about a second per volume at 3 mm)")
    parser.add_argument("--repositioning", nargs=2, type=_finite,
                        default=(TrialDesign.session_translation_mm, TrialDesign.session_rotation_deg),
                        metavar=("MM", "DEG"),
                        help="SD of the head repositioning between sessions per axis, clipped at "
                             "2.5 SD (default 3 3; 2 2 gives up to 5 mm / 5 degrees)")
    parser.add_argument("--t1w", nargs="?", type=_finite, const=1.0, default=None, metavar="MM",
                        help="also write a T1w in each session's anat/ (voxel size MM, default 1), "
                             "with its true tissue fractions and bias field in the truth folder")
    parser.add_argument("--distortion", type=_finite, default=0.0, metavar="HZ",
                        help="distort every DWI series by a susceptibility field peaking at HZ over "
                             "the frontal sinus and the temporal bones (e.g. 100; default 0: none); "
                             "the field is written to the truth folder")
    parser.add_argument("--reverse-pe", action="store_true",
                        help="with --distortion: also write the b=0 volumes with the opposite phase "
                             "encoding (fmap/*_dir-PA_epi, IntendedFor the DWI)")
    parser.add_argument("--gre-fieldmap", action="store_true",
                        help="with --distortion: also write a GRE field map (fmap/*_phasediff with "
                             "magnitude1, IntendedFor the DWI)")
    parser.add_argument("--no-noise", action="store_true", help="write noise-free data")
    parser.add_argument("--no-motion", action="store_true", help="no per-volume motion")
    parser.add_argument("--no-images", action="store_true",
                        help="write only the clinical tables and the truth (fast, for power analyses)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a previous simulation in OUTPUT_BIDS_DIR")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.design == "repeated-infusion":
        return _repeated_infusion(parser, args)
    from bids_ketamine.simulate import simulate_trial

    options = dict(
        snr=args.snr,
        motion=args.motion,
        md_change_ketamine=tuple(args.md_change_ketamine),
        md_change_saline=tuple(args.md_change_saline),
        arm_ratio=tuple(args.arm_ratio),
        sessions=tuple(bare_label(s, "ses") for s in args.sessions),
        null=args.null,
        noise=not args.no_noise,
        motion_enabled=not args.no_motion,
        roi_correlation=args.roi_correlation,
        visit_interval_hours=args.visit_interval_hours,
        orientation=args.orientation,
        oblique_deg=args.oblique,
        effect_model=args.effect_model,
        scanner_drift_pct=args.scanner_drift,
        session_translation_mm=args.repositioning[0],
        session_rotation_deg=args.repositioning[1],
        motion_sampling=args.motion_sampling,
    )
    if args.atlas_image is not None and not args.atlas_image.is_file():
        parser.error(f"--atlas-image {args.atlas_image} does not exist")
    start = time.perf_counter()
    try:
        root = simulate_trial(args.output_dir, args.n_subjects, args.seed, args.preset,
                              overwrite=args.overwrite, progress=not args.quiet,
                              images=not args.no_images,
                              atlas_image=args.atlas_image, t1w=args.t1w is not None,
                              t1w_voxel_mm=args.t1w or 1.0, distortion_hz=args.distortion,
                              reverse_pe=args.reverse_pe, gre_fieldmap=args.gre_fieldmap, **options)
    except (ValueError, FileExistsError) as err:
        parser.error(" ".join(str(err).split()))
    if not args.quiet:
        elapsed = time.perf_counter() - start
        n_series = args.n_subjects * len(args.sessions)
        what = "clinical tables" if args.no_images else f"{n_series} DWI series"
        print(f"{PROG}: wrote {args.n_subjects} participants x {len(args.sessions)} sessions "
              f"({what}) to {root} in {elapsed:.1f} s; truth in "
              f"{root / 'sourcedata' / 'simulation'}", file=sys.stderr)
    return 0


def _repeated_infusion(parser, args) -> int:
    from bids_ketamine.simulate.infusion import InfusionDesign, write_repeated_infusion

    design = InfusionDesign(n_subjects=args.n_subjects, seed=args.seed, null=args.null)
    try:
        root = write_repeated_infusion(args.output_dir, design, overwrite=args.overwrite)
    except (ValueError, FileExistsError) as err:
        parser.error(" ".join(str(err).split()))
    if not args.quiet:
        print(f"{PROG}: wrote a repeated-infusion study of {args.n_subjects} participants x "
              f"{len(design.sessions)} sessions (clinical tables, no imaging) to {root}; truth in "
              f"{root / 'sourcedata' / 'simulation'}", file=sys.stderr)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
