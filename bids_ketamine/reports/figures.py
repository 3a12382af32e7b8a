"""Figures of the reports: nilearn slices and matplotlib plots, written as PNG files.

All functions take images (paths or nibabel images) or tables, write one PNG to
``out_file`` and return its path.  They are kept quick (a handful of axial cuts, moderate
dpi): a participant report draws a dozen of them per session.

Kept as one module (~500 lines): independent plot functions that share the display helpers at
the top.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # reports are drawn without a display

import matplotlib.pyplot as plt  # noqa: E402
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from nilearn import image as nimage  # noqa: E402
from nilearn import plotting  # noqa: E402
from scipy import ndimage  # noqa: E402

from bids_ketamine.utils.images import as_image  # noqa: E402

#: Resolution of the PNG files.
DPI = 80
#: Width of a row of slices, in inches.
ROW_WIDTH = 14.5
#: Outline colour of masks and templates (visible on grey and on hot colour maps).
OUTLINE_COLOR = "#ff4d4d"
#: Qualitative colours of ROI outlines (Okabe-Ito plus extras; colour-blind safe first).
LABEL_PALETTE = (
    "#e69f00", "#56b4e9", "#009e73", "#f0e442", "#0072b2", "#d55e00", "#cc79a7",
    "#ffffff", "#999999", "#a6d854", "#8da0cb", "#fc8d62",
)


def _load_3d(img) -> nib.Nifti1Image:
    """Load an image and take the mean over a 4th axis, if any."""
    loaded = as_image(img)
    if len(loaded.shape) == 4:
        loaded = nimage.mean_img(loaded, copy_header=True)
    elif len(loaded.shape) != 3:
        raise ValueError(
            f"expected a 3-D image, got shape {loaded.shape}; pass a single volume or map"
        )
    return loaded


def robust_range(img, percentiles: tuple[float, float] = (0.5, 99.5)) -> tuple[float, float]:
    """Display window of an image: percentiles of its non-zero finite voxels.

    Parameters
    ----------
    img : path or nibabel image
    percentiles : (low, high)

    Returns
    -------
    vmin, vmax : float
    """
    data = np.asarray(_load_3d(img).dataobj, dtype=float)
    values = data[np.isfinite(data) & (data != 0)]
    if values.size == 0:
        return 0.0, 1.0
    low, high = np.percentile(values, percentiles)
    if high <= low:
        high = low + 1.0
    return float(low), float(high)


def extent_cuts(img, n_cuts: int, axis: str = "z", margin: float = 0.12) -> list[float]:
    """``n_cuts`` positions (world mm) spread evenly over the extent of an image's signal.

    Cuts through the brain only: nilearn's automatic cuts follow the image's intensity
    and may land in the neck or above the head of a large field of view.

    Parameters
    ----------
    img : path or nibabel image
        A mask, a masked map or an image whose background is dark.
    n_cuts : int
    axis : {"x", "y", "z"}
    margin : float
        Fraction of the extent left out at each end (the first and last slices of a
        brain show little).

    Returns
    -------
    list of float
        Empty when the image is all zero.
    """
    if axis not in ("x", "y", "z"):
        raise ValueError(f"axis must be 'x', 'y' or 'z' (got {axis!r})")
    if n_cuts < 1:
        raise ValueError(f"n_cuts must be 1 or more (got {n_cuts})")
    image = _load_3d(img)
    data = np.abs(np.asarray(image.dataobj, dtype=float))
    finite = np.isfinite(data) & (data > 0)
    if not finite.any():
        return []
    # Above 5 % of the bright end: masks and masked maps keep every voxel, images with
    # a noisy background (a b=0) lose the background.
    bright = finite & (data >= 0.05 * np.percentile(data[finite], 99))
    box = [np.flatnonzero(bright.any(axis=tuple(a for a in range(3) if a != axis)))[[0, -1]]
           for axis in range(3)]
    corners = nib.affines.apply_affine(image.affine, np.stack(box, axis=1))
    dim = "xyz".index(axis)
    low, high = np.sort(corners[:, dim])
    span = high - low
    return [float(round(v, 1)) for v in np.linspace(low + margin * span, high - margin * span, n_cuts)]


def _slice_figure(height: float = 2.5):
    return plt.figure(figsize=(ROW_WIDTH, height), facecolor="black")


def _save(display, out_file: Path) -> Path:
    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    display.savefig(str(out_file), dpi=DPI)
    display.close()
    plt.close("all")
    return out_file


def plot_map(
    img,
    out_file: Path,
    *,
    cmap: str = "gray",
    vmin: float | None = None,
    vmax: float | None = None,
    n_cuts: int = 7,
    colorbar: bool = True,
    extent=None,
) -> Path:
    """Axial slices of a scalar map (FA, MD, noise, mean b=0).

    Parameters
    ----------
    img : path or nibabel image
        A 3-D map (4-D images are averaged over volumes).
    out_file : Path
        PNG to write.
    cmap : str
        Matplotlib colour map.
    vmin, vmax : float, optional
        Display window; default :func:`robust_range`.
    n_cuts : int
        Number of axial slices.
    colorbar : bool
        Draw the colour bar.
    extent : path or nibabel image, optional
        Mask whose extent the slices span (:func:`extent_cuts`); default the map's own
        non-zero voxels.

    Returns
    -------
    Path
    """
    image = _load_3d(img)
    cuts = extent_cuts(image if extent is None else extent, n_cuts) or n_cuts
    if vmin is None or vmax is None:
        low, high = robust_range(image)
        vmin = low if vmin is None else vmin
        vmax = high if vmax is None else vmax
    display = plotting.plot_img(
        image,
        display_mode="z",
        cut_coords=cuts,
        cmap=cmap,
        vmin=vmin,
        vmax=vmax,
        colorbar=colorbar,
        black_bg=True,
        figure=_slice_figure(),
        annotate=True,
        draw_cross=False,
    )
    return _save(display, out_file)


def plot_field(img, out_file: Path, *, extent=None) -> Path:
    """Axial slices of a B0 field map (Hz): :func:`plot_map` with a diverging colour map and a
    window symmetric about zero (the largest of :func:`robust_range`'s bounds)."""
    low, high = robust_range(img, (1.0, 99.0))
    limit = max(abs(low), abs(high), 1.0)
    return plot_map(img, out_file, cmap="RdBu_r", vmin=-limit, vmax=limit, extent=extent)


def plot_outline(
    background,
    outline,
    out_file: Path,
    *,
    level: float = 0.5,
    color: str = OUTLINE_COLOR,
    extra_outlines: Sequence[tuple[object, float, str]] = (),
    vmin: float | None = None,
    vmax: float | None = None,
    n_cuts: int = 7,
    display_modes: Sequence[str] = ("z",),
) -> Path:
    """The contour of ``outline`` at ``level`` drawn over ``background``.

    Used for the brain mask on the mean b=0 and for the template's tissue boundary on
    the subject's FA in template space.

    Parameters
    ----------
    background : path or nibabel image
    outline : path or nibabel image
        A mask or probability map; its contour at ``level`` is drawn.
    out_file : Path
    level : float
    color : str
    extra_outlines : sequence of (image, level, colour)
        More contours drawn the same way (e.g. a template's brain edge beside its
        white-matter boundary).
    vmin, vmax : float, optional
        Window of the background (default :func:`robust_range`).
    n_cuts : int
        Slices per row.
    display_modes : sequence of {"x", "y", "z"}
        One row of slices per entry, spanning the extent of ``outline``
        (:func:`extent_cuts`).

    Returns
    -------
    Path
    """
    image = _load_3d(background)
    contours = [(_load_3d(outline), level, color)]
    contours += [(_load_3d(img), lev, col) for img, lev, col in extra_outlines]
    if vmin is None or vmax is None:
        low, high = robust_range(image)
        vmin = low if vmin is None else vmin
        vmax = high if vmax is None else vmax
    rows = list(display_modes)
    if not rows or any(mode not in ("x", "y", "z") for mode in rows):
        raise ValueError(f"display_modes must list 'x', 'y' or 'z' (got {display_modes!r})")
    fig = _slice_figure(2.5 * len(rows))
    for index, mode in enumerate(rows):
        top = 1.0 - index / len(rows)
        display = plotting.plot_anat(
            image,
            display_mode=mode,
            cut_coords=extent_cuts(contours[0][0], n_cuts, mode) or n_cuts,
            vmin=vmin,
            vmax=vmax,
            colorbar=False,
            black_bg=True,
            dim=0,
            figure=fig,
            axes=(0.0, top - 1.0 / len(rows), 1.0, 1.0 / len(rows)),
            draw_cross=False,
        )
        for contour, contour_level, contour_color in contours:
            display.add_contours(
                contour, levels=[contour_level], colors=[contour_color], linewidths=1.2
            )
    return _save(display, out_file)


def label_colors(labels: Mapping[int, str]) -> dict[int, str]:
    """Colour of each label index in :func:`plot_label_outlines` (same order every time)."""
    return {
        index: LABEL_PALETTE[position % len(LABEL_PALETTE)]
        for position, index in enumerate(sorted(labels))
    }


def label_cut_coords(dseg, axis: str = "z", max_cuts: int = 7) -> list[float]:
    """Positions (world mm) along ``axis`` through the centres of the labels of a segmentation.

    Centres closer than two voxels are merged; at most ``max_cuts`` positions are kept,
    spread over the range.

    Parameters
    ----------
    dseg : path or nibabel image
        Integer label image.
    axis : {"x", "y", "z"}
    max_cuts : int

    Returns
    -------
    list of float
        Sorted positions; empty when the image holds no label.
    """
    if axis not in ("x", "y", "z"):
        raise ValueError(f"axis must be 'x', 'y' or 'z' (got {axis!r})")
    dim = "xyz".index(axis)
    image = _load_3d(dseg)
    data = np.asarray(image.dataobj).astype(int)
    indices = [int(i) for i in np.unique(data) if i > 0]
    if not indices:
        return []
    centres = ndimage.center_of_mass(data > 0, data, indices)
    world = nib.affines.apply_affine(image.affine, np.asarray(centres))
    values = np.sort(world[:, dim])
    step = 2.0 * float(np.abs(nib.affines.voxel_sizes(image.affine)[dim]))
    merged = [values[0]]
    for value in values[1:]:
        if value - merged[-1] >= step:
            merged.append(value)
    if len(merged) > max_cuts:
        keep = np.linspace(0, len(merged) - 1, max_cuts).round().astype(int)
        merged = [merged[i] for i in keep]
    return [float(round(v, 1)) for v in merged]


def plot_label_outlines(
    background,
    dseg,
    labels: Mapping[int, str],
    out_file: Path,
    *,
    vmin: float | None = None,
    vmax: float | None = None,
) -> Path:
    """Each label of ``dseg`` outlined in its colour (:func:`label_colors`) over ``background``.

    Two rows: axial and coronal slices through the label centres
    (:func:`label_cut_coords`).

    Parameters
    ----------
    background : path or nibabel image
        E.g. the session's MD map (same space as ``dseg``).
    dseg : path or nibabel image
        Integer label image.
    labels : mapping of int to str
        Label indices to draw (others are ignored).
    out_file : Path
    vmin, vmax : float, optional
        Window of the background.

    Returns
    -------
    Path
    """
    image = _load_3d(background)
    seg = _load_3d(dseg)
    data = np.asarray(seg.dataobj).astype(int)
    if vmin is None or vmax is None:
        low, high = robust_range(image)
        vmin = low if vmin is None else vmin
        vmax = high if vmax is None else vmax
    rows = [(mode, label_cut_coords(seg, mode) or 5) for mode in ("z", "y")]
    n_cols = max(len(c) if isinstance(c, list) else c for _, c in rows)
    fig = plt.figure(figsize=(min(ROW_WIDTH, 1.9 * n_cols), 2.3 * len(rows)), facecolor="black")
    masks = [
        (nimage.new_img_like(seg, (data == index).astype(np.float32)), color)
        for index, color in label_colors(labels).items()
        if (data == index).any()
    ]
    for row, (mode, cuts) in enumerate(rows):
        display = plotting.plot_anat(
            image,
            display_mode=mode,
            cut_coords=cuts,
            vmin=vmin,
            vmax=vmax,
            colorbar=False,
            black_bg=True,
            dim=0,
            figure=fig,
            axes=(0.0, 1.0 - (row + 1) / len(rows), 1.0, 1.0 / len(rows)),
            draw_cross=False,
        )
        for mask, color in masks:
            display.add_contours(mask, levels=[0.5], colors=[color], linewidths=1.6)
    return _save(display, out_file)


def plot_motion(
    motion: pd.DataFrame,
    out_file: Path,
    *,
    max_fd_limit: float | None = None,
    mean_fd_limit: float | None = None,
) -> Path:
    """Translations, rotations and framewise displacement per volume.

    Parameters
    ----------
    motion : DataFrame
        Columns ``trans_x``, ``trans_y``, ``trans_z`` (mm), ``rot_x``, ``rot_y``, ``rot_z``
        (radians, drawn in degrees) and ``framewise_displacement`` (mm); any may be absent.
    out_file : Path
    max_fd_limit, mean_fd_limit : float, optional
        Warning thresholds drawn as horizontal lines on the FD panel.

    Returns
    -------
    Path
    """
    if motion.empty:
        raise ValueError("the motion table has no rows; nothing to plot")
    panels = []
    trans = [c for c in ("trans_x", "trans_y", "trans_z") if c in motion]
    rots = [c for c in ("rot_x", "rot_y", "rot_z") if c in motion]
    if trans:
        panels.append(("translation (mm)", motion[trans], trans))
    if rots:
        panels.append(("rotation (deg)", np.degrees(motion[rots]), rots))
    if "framewise_displacement" in motion:
        panels.append(("FD (mm)", motion[["framewise_displacement"]], ["framewise_displacement"]))
    if not panels:
        raise ValueError(
            "the motion table has none of the columns trans_*, rot_*, framewise_displacement"
        )
    fig = Figure(figsize=(ROW_WIDTH, 1.7 * len(panels) + 0.5), layout="constrained")
    axes = np.atleast_1d(fig.subplots(len(panels), 1, sharex=True))
    volumes = np.arange(len(motion))
    colors = ("#d62728", "#2ca02c", "#1f77b4")
    for ax, (ylabel, values, names) in zip(axes, panels):
        for color, name in zip(colors, names):
            series = np.asarray(values[name], dtype=float)
            label = name.replace("framewise_displacement", "FD").replace("_", " ")
            if name == "framewise_displacement":
                ax.fill_between(volumes, series, color="#486581", alpha=0.25, step="mid")
                ax.plot(volumes, series, color="#243b53", lw=1.3, drawstyle="steps-mid", label="FD")
                mean_fd = np.nanmean(series)
                ax.axhline(mean_fd, color="#2680c2", ls=":", lw=1.2, label=f"mean {mean_fd:.2f} mm")
                if max_fd_limit is not None:
                    ax.axhline(max_fd_limit, color="#e12d39", ls="--", lw=1,
                               label=f"max FD limit {max_fd_limit:g} mm")
                if mean_fd_limit is not None:
                    ax.axhline(mean_fd_limit, color="#f0b429", ls="--", lw=1,
                               label=f"mean FD limit {mean_fd_limit:g} mm")
            else:
                ax.plot(volumes, series, color=color, lw=1.2, label=label)
        ax.set_ylabel(ylabel)
        ax.grid(True, color="#e4e7eb", lw=0.6)
        ax.legend(loc="upper left", fontsize=8, ncol=4, frameon=False)
        ax.spines[["top", "right"]].set_visible(False)
    axes[-1].set_xlabel("volume")
    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_file, dpi=DPI)
    return out_file


def plot_change_by_group(
    table: pd.DataFrame,
    out_file: Path,
    *,
    outcomes: Sequence[str],
    group_column: str = "group",
    colors: Mapping[str, str] | None = None,
) -> Path:
    """Box and dots of each outcome's change, one box per group.

    Parameters
    ----------
    table : DataFrame
        One row per participant with ``group_column`` and ``<outcome>_change`` columns.
    out_file : Path
    outcomes : sequence of str
        Outcome names (columns ``<outcome>_change`` must exist).
    group_column : str
    colors : mapping of group to colour, optional

    Returns
    -------
    Path
    """
    missing = [f"{o}_change" for o in outcomes if f"{o}_change" not in table]
    if missing or group_column not in table:
        raise ValueError(
            f"the table lacks columns {missing + ([group_column] if group_column not in table else [])}; "
            "pass one row per participant with the group and <outcome>_change columns"
        )
    if not outcomes:
        raise ValueError("no outcome to plot: pass at least one outcome name")
    groups = sorted(table[group_column].dropna().astype(str).unique())
    palette = dict(colors or {})
    defaults = ("#d55e00", "#0072b2", "#009e73", "#cc79a7")
    for index, group in enumerate(groups):
        palette.setdefault(group, defaults[index % len(defaults)])
    fig = Figure(figsize=(min(4.2 * len(outcomes), ROW_WIDTH), 3.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(outcomes)))
    rng = np.random.default_rng(0)  # jitter of the dots only
    for ax, outcome in zip(axes, outcomes):
        data = [
            pd.to_numeric(table.loc[table[group_column].astype(str) == g, f"{outcome}_change"],
                          errors="coerce").dropna().to_numpy()
            for g in groups
        ]
        box = ax.boxplot(data, tick_labels=groups, widths=0.5, showfliers=False, patch_artist=True)
        for patch, group in zip(box["boxes"], groups):
            patch.set_facecolor(palette[group])
            patch.set_alpha(0.25)
        for position, (values, group) in enumerate(zip(data, groups), start=1):
            jitter = rng.uniform(-0.12, 0.12, size=values.size)
            ax.scatter(np.full(values.size, position) + jitter, values, s=16,
                       color=palette[group], alpha=0.85, zorder=3)
        ax.axhline(0, color="#9aa5b1", lw=0.8)
        ax.set_title(outcome)
        ax.set_ylabel("change (follow-up - baseline)")
        ax.spines[["top", "right"]].set_visible(False)
    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_file, dpi=DPI)
    return out_file
