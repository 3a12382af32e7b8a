"""bids_ketamine: longitudinal grey-matter mean diffusivity and clinical response, as a BIDS App."""

__version__ = "0.1.0"

__all__ = ["__version__"]
