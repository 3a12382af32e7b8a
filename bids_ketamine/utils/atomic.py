"""Atomic file writes: a reader sees the old file or the new one, never a part of one.

Every writer here writes into a temporary file in the destination's own folder (so that
the final rename stays on one file system), named after the destination with the process
id and a random token (so that concurrent writers never share one), flushes it to disk
with ``fsync``, and then moves it over the destination with :func:`os.replace`, which POSIX
makes atomic.  If anything fails before the rename (an exception, ``KeyboardInterrupt``),
the temporary file is removed and the destination is left as it was.

This matters when several processes write into one OUTPUT_DIR at once, for instance a
Slurm array with one participant-level job per participant: they all write
``dataset_description.json`` (see :func:`write_dataset_description`).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

__all__ = [
    "atomic_copy",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_nifti",
    "atomic_write_text",
    "atomic_write_tsv",
    "write_dataset_description",
]

#: Marker in the names of temporary files (``.<name>.<pid>.<token>.tmp<suffixes>``).
TEMP_MARKER = ".tmp"

_KNOWN_DOUBLE_SUFFIXES = (".nii.gz", ".tsv.gz", ".tar.gz", ".gii.gz")


def _suffix(path: Path) -> str:
    """The extension that decides the file format (``.nii.gz`` kept whole)."""
    name = path.name.lower()
    for double in _KNOWN_DOUBLE_SUFFIXES:
        if name.endswith(double) and len(name) > len(double):
            return path.name[-len(double):]
    return path.suffix


def temporary_sibling(path: str | os.PathLike) -> Path:
    """A unique temporary path next to ``path``, with the same extension.

    The name is hidden (leading dot), holds the process id and a random token, and ends
    with ``path``'s extension so that format-sniffing writers (nibabel) still work.

    Parameters
    ----------
    path : path-like
        The destination the temporary file will replace.

    Returns
    -------
    Path
    """
    path = Path(path)
    suffix = _suffix(path)
    stem = path.name[: len(path.name) - len(suffix)] if suffix else path.name
    return path.with_name(f".{stem}.{os.getpid()}.{secrets.token_hex(6)}{TEMP_MARKER}{suffix}")


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (not supported on every platform)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _destination(path: str | os.PathLike) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"the destination must be a path, not {type(path).__name__}")
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"'{path}' is a directory; give the path of a file inside it")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Context manager yielding a temporary path that replaces ``path`` on success.

    Write the file at the yielded path inside the ``with`` block; when the block ends
    without an exception the file is fsynced and renamed over ``path``.  On any exception
    (including ``KeyboardInterrupt``) the temporary file is removed, ``path`` is untouched
    and the exception propagates.

    Parameters
    ----------
    path : path-like
        The destination.  Its folder is created if missing.

    Yields
    ------
    Path
        Where to write.

    Examples
    --------
    >>> with atomic_path("out/table.tsv") as tmp:          # doctest: +SKIP
    ...     frame.to_csv(tmp, sep="\\t")
    """
    path = _destination(path)
    tmp = temporary_sibling(path)
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(
                f"nothing was written to the temporary file for '{path}'; write to the "
                "path that atomic_path yields"
            )
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically.

    Parameters
    ----------
    path : path-like
        The destination (its folder is created if missing).
    data : bytes
        The whole content.

    Returns
    -------
    Path
        ``path``.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data must be bytes, not {type(data).__name__}; use "
                        "atomic_write_text for str")
    with atomic_path(path) as tmp:
        with open(tmp, "xb") as handle:
            handle.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically.

    Parameters
    ----------
    path : path-like
        The destination (its folder is created if missing).
    text : str
        The whole content.
    encoding : str
        Text encoding (default UTF-8).

    Returns
    -------
    Path
        ``path``.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be str, not {type(text).__name__}; use "
                        "atomic_write_bytes for bytes")
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_write_nifti(img, path: str | os.PathLike) -> Path:
    """Save a nibabel image to ``path`` atomically.

    Parameters
    ----------
    img : nibabel.spatialimages.SpatialImage
        The image (anything with ``to_filename``).
    path : path-like
        The destination; its extension (``.nii`` or ``.nii.gz``) picks the format.

    Returns
    -------
    Path
        ``path``.
    """
    if not hasattr(img, "to_filename"):
        raise TypeError(f"img must be a nibabel image, not {type(img).__name__}")
    with atomic_path(path) as tmp:
        img.to_filename(str(tmp))
    return Path(path)


def atomic_write_tsv(df, path: str | os.PathLike, **to_csv_kwargs: Any) -> Path:
    """Write a pandas DataFrame as a BIDS TSV file, atomically.

    Parameters
    ----------
    df : pandas.DataFrame
        The table.
    path : path-like
        The destination.
    **to_csv_kwargs
        Passed to :meth:`pandas.DataFrame.to_csv`; the defaults are BIDS's: tab
        separated, no index, missing values written as ``n/a``.

    Returns
    -------
    Path
        ``path``.
    """
    if not hasattr(df, "to_csv"):
        raise TypeError(f"df must be a pandas DataFrame, not {type(df).__name__}")
    options = {"sep": "\t", "index": False, "na_rep": "n/a", "lineterminator": "\n"}
    options.update(to_csv_kwargs)
    with atomic_path(path) as tmp:
        df.to_csv(tmp, **options)
    return Path(path)


def atomic_copy(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Copy a file (content and permission bits) to ``dst`` atomically.

    Parameters
    ----------
    src : path-like
        An existing file.
    dst : path-like
        The destination file (not a folder).

    Returns
    -------
    Path
        ``dst``.
    """
    src = Path(src)
    if not src.is_file():
        raise FileNotFoundError(f"cannot copy '{src}': it is not an existing file")
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)
        shutil.copymode(src, tmp)
    return Path(dst)


def write_dataset_description(output_dir: str | os.PathLike, content: Mapping[str, Any]) -> Path:
    """Write ``OUTPUT_DIR/dataset_description.json``, safe with concurrent writers.

    Several participant-level processes (a Slurm array) may call this at the same time for
    one OUTPUT_DIR.  An existing file holding the same JSON content is left as it is (not
    rewritten); otherwise the file is replaced atomically, so that a reader always finds
    complete, valid JSON.

    Parameters
    ----------
    output_dir : path-like
        The derivatives folder (created if missing).
    content : mapping
        The description; BIDS requires ``Name`` and ``BIDSVersion``, and derivatives add
        ``DatasetType: "derivative"`` and ``GeneratedBy``.

    Returns
    -------
    Path
        The path of ``dataset_description.json``.

    Raises
    ------
    ValueError
        If ``content`` lacks ``Name`` or ``BIDSVersion``, or cannot be written as JSON.
    """
    if not isinstance(content, Mapping):
        raise TypeError(f"content must be a mapping (dict), not {type(content).__name__}")
    missing = [key for key in ("Name", "BIDSVersion") if key not in content]
    if missing:
        raise ValueError(f"dataset_description content lacks the required BIDS keys "
                         f"{missing}; add them (e.g. 'BIDSVersion': '1.9.0')")
    try:
        text = json.dumps(dict(content), indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    except (TypeError, ValueError) as err:
        raise ValueError(f"dataset_description content is not JSON-serialisable: {err}; "
                         "convert paths and numpy values to str/float first") from None
    path = Path(output_dir) / "dataset_description.json"
    try:
        existing = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        existing = None
    if existing == json.loads(text):
        return path
    atomic_write_text(path, text)
    return path
