"""A simulated T1-weighted image of a session (``bids-ketamine-simulate --t1w``).

The tissue fractions come from the simulator's own anatomy
(:func:`~bids_ketamine.simulate.anatomy.sample_anatomy`, supersampled partial volume) on a
T1w grid in the scanner, with the head placed exactly as in the session's DWI (the same
head-to-template and head-to-scanner transforms).  Contrast::

    T1w = gain * bias(x) * (f_csf * I_csf + f_gm * I_gm + f_wm * I_wm + (1 - f_brain) * head(x))

with the pure-tissue intensities of :data:`T1W_INTENSITY`, ``head`` the template's own T1w
outside the brain (scalp, skull, neck: what a registration-based brain extraction has to
cope with), scaled so that the template's white matter has intensity ``I_wm``, ``bias`` a
smooth multiplicative field (a low-order polynomial of position, +-``bias_amplitude``) and
Rician noise of standard deviation ``I_wm / snr``.
"""

from __future__ import annotations

from dataclasses import dataclass

import nibabel as nib
import numpy as np
from scipy import ndimage

from bids_ketamine.simulate.anatomy import SessionAnatomy, TemplateAnatomy, sample_anatomy
from bids_ketamine.simulate.geometry import acquisition_affine, grid_centres
from bids_ketamine.simulate.signal import add_rician_noise

__all__ = ["T1W_INTENSITY", "T1W_FIELD_OF_VIEW_MM", "SimulatedT1w", "simulate_t1w"]

#: Pure-tissue T1w intensities (arbitrary units; WM brightest, then GM, then CSF).
T1W_INTENSITY = {"csf": 250.0, "gm": 600.0, "wm": 1000.0}
#: Field of view of the simulated T1w (mm, left-right, posterior-anterior, inferior-superior).
T1W_FIELD_OF_VIEW_MM = (176.0, 216.0, 192.0)


@dataclass
class SimulatedT1w:
    """One session's T1w and its truth.

    Attributes
    ----------
    data : ndarray float32 3D
    affine : ndarray (4, 4)
    anatomy : SessionAnatomy
        True tissue fractions on the T1w grid.
    bias : ndarray float32 3D
        The multiplicative bias field applied.
    """

    data: np.ndarray
    affine: np.ndarray
    anatomy: SessionAnatomy
    bias: np.ndarray


def _bias_field(points: np.ndarray, rng: np.random.Generator, amplitude: float) -> np.ndarray:
    """``1 + amplitude * p(x)``, p a random quadratic polynomial of position scaled to [-1, 1]."""
    scaled = points / 100.0  # head-sized coordinates in about [-1, 1]
    linear = rng.uniform(-1.0, 1.0, size=3)
    quadratic = rng.uniform(-0.5, 0.5, size=3)
    poly = scaled @ linear + (scaled**2) @ quadratic
    poly /= max(float(np.max(np.abs(poly))), 1e-12)
    return (1.0 + amplitude * poly).astype(np.float32)


def simulate_t1w(anatomy: TemplateAnatomy, template_t1w, scanner_to_template, *,
                 rng: np.random.Generator, voxel_size: float = 1.0, snr: float | None = 40.0,
                 bias_amplitude: float = 0.2, gain: float = 1.0,
                 orientation: str = "LAS") -> SimulatedT1w:
    """Simulate a session's T1w.

    Parameters
    ----------
    anatomy : TemplateAnatomy
    template_t1w : path or nibabel image
        The template's T1w (head outside the brain).
    scanner_to_template : callable
        Maps scanner points (..., 3) to template points: the session's head placement.
    rng : numpy.random.Generator
        Draws the bias field and the noise.
    voxel_size : float
        Isotropic voxel size (mm).
    snr : float or None
        White-matter intensity over noise standard deviation (None: noise-free).
    bias_amplitude : float
        Largest relative deviation of the bias field from 1, in [0, 0.5).
    gain : float
        Receiver gain.
    orientation : {"LAS", "RAS"}

    Returns
    -------
    SimulatedT1w
    """
    if not 0.5 <= voxel_size <= 4.0:
        raise ValueError(f"T1w voxel size must lie in [0.5, 4] mm, got {voxel_size}")
    if not 0.0 <= bias_amplitude < 0.5:
        raise ValueError(f"bias_amplitude must lie in [0, 0.5), got {bias_amplitude}")
    if snr is not None and not snr > 0:
        raise ValueError(f"snr must be positive (or None), got {snr}")
    shape = tuple(int(np.ceil(fov / voxel_size)) for fov in T1W_FIELD_OF_VIEW_MM)
    affine = acquisition_affine(shape, voxel_size, orientation)
    tissues = sample_anatomy(anatomy, shape, affine, scanner_to_template)
    brain = sum(tissues.fractions[name] * T1W_INTENSITY[name] for name in T1W_INTENSITY)
    brain_fraction = sum(tissues.fractions[name] for name in T1W_INTENSITY)

    template = nib.load(template_t1w) if not hasattr(template_t1w, "affine") else template_t1w
    head_data = np.asanyarray(template.dataobj, dtype=np.float32)
    wm_code = anatomy.codes % 4 == 3
    scale = T1W_INTENSITY["wm"] / max(float(np.median(head_data[wm_code])), 1e-12)
    points = scanner_to_template(grid_centres(shape, affine))
    inverse = np.linalg.inv(template.affine)
    index = points @ inverse[:3, :3].T + inverse[:3, 3]
    head = ndimage.map_coordinates(head_data, np.moveaxis(index, -1, 0), order=1, cval=0.0)
    clean = brain + (1.0 - brain_fraction) * np.clip(head, 0.0, None) * scale
    bias = _bias_field(grid_centres(shape, affine), rng, bias_amplitude)
    signal = gain * bias * clean
    sigma = 0.0 if snr is None else gain * T1W_INTENSITY["wm"] / float(snr)
    noisy = add_rician_noise(signal, sigma, rng)
    return SimulatedT1w(data=np.asarray(noisy, dtype=np.float32), affine=affine, anatomy=tissues,
                        bias=bias)
