"""Atomic file writes: a reader never sees half a file, and an interrupted write
leaves the previous version in place."""

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; rename it over `path` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def sha256_file(path, chunk=1 << 20):
    """Hex SHA-256 of a file's bytes, read in chunks so large files need little memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def write_text(path, text):
    with atomic_path(path) as tmp:
        # newline="" keeps "\n" on Windows too, so outputs are byte-identical across OSes.
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)


def write_json(path, obj, indent=2):
    write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False, allow_nan=False) + "\n")


def not_utf8_error(path, exc):
    from medclf.core.errors import MedclfError

    bad = exc.object[exc.start:exc.start + 1] if isinstance(exc.object, bytes) else b""
    return MedclfError(f"{path}: not UTF-8 text (cannot decode byte {bad!r}); save it as UTF-8 "
                       "(spreadsheets: CSV UTF-8)")


def read_json(path):
    from medclf.core.errors import MedclfError

    path = Path(path)
    if path.is_dir():
        raise MedclfError(f"{path}: is a folder, not a JSON file; give the file's path")
    if not path.is_file():
        raise MedclfError(f"{path}: file not found")
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except UnicodeDecodeError as exc:
        raise not_utf8_error(path, exc) from exc
    except json.JSONDecodeError as exc:
        raise MedclfError(f"{path}: not valid JSON ({exc}); re-create it with the stage that writes it") from exc


def read_csv(path, remedy, **kwargs):
    """pandas.read_csv, with what a user can fix (a folder, no file, empty, not UTF-8, broken
    quoting) refused as one MedclfError line that ends with `remedy`."""
    import pandas as pd

    from medclf.core.errors import MedclfError

    path = Path(path)
    if path.is_dir():
        raise MedclfError(f"{path}: is a folder, not a CSV file; give the file's path")
    if not path.is_file():
        raise MedclfError(f"{path}: file not found; {remedy}")
    try:
        return pd.read_csv(path, **kwargs)
    except UnicodeDecodeError as exc:
        raise not_utf8_error(path, exc) from exc
    except pd.errors.EmptyDataError as exc:
        raise MedclfError(f"{path}: empty file (not even a header row); {remedy}") from exc
    except pd.errors.ParserError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MedclfError(f"{path}: not a valid CSV file ({reason}); {remedy}") from exc
