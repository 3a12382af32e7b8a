"""Small helpers shared by the stages of the pipeline (no numerical code here)."""

from bids_ketamine.utils.atomic import (
    atomic_copy,
    atomic_path,
    atomic_write_bytes,
    atomic_write_nifti,
    atomic_write_text,
    atomic_write_tsv,
    write_dataset_description,
)

__all__ = [
    "atomic_copy",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_nifti",
    "atomic_write_text",
    "atomic_write_tsv",
    "write_dataset_description",
]
