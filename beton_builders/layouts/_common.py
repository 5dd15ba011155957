"""Helpers shared by the layout readers: listing files, parsing split files, errors.

Every problem is raised as a :class:`~ffcv_dp4tl.errors.DataError` whose message names the
file (and line/field) and says what to do. Readers only enumerate samples; a split-file line
that points at a missing image is kept (the writer rejects it and lists it in rejects.txt).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from ffcv_dp4tl.errors import DataError

from ..spec import DatasetSpec, Sample, printable, split_name_problem

#: Image extensions accepted when listing folders (compared case-insensitively): those PIL reads
#: that torchvision's ImageFolder lists, and JPEG's other names (.jfif, .jpe)
IMAGE_EXTS = frozenset({".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".tif", ".tiff",
                        ".webp", ".ppm", ".pgm", ".pbm", ".pnm"})


def bad(path: Path | str | None, msg: str, *, line: int | None = None, hint: str = "") -> DataError:
    """Build a DataError ``"<path>:<line>: <msg>; <hint>"`` (use as ``raise bad(...)``)."""
    where = ""
    if path is not None:
        where = f"{path}:{line}: " if line is not None else f"{path}: "
    text = where + msg
    if hint:
        text += f"; {hint}"
    return DataError(text)


def require_dir(path: Path, hint: str) -> Path:
    if not path.is_dir():
        raise bad(path, "folder not found", hint=hint)
    return path


def require_file(path: Path, hint: str) -> Path:
    if not path.is_file():
        raise bad(path, "file not found", hint=hint)
    return path


def dataset_dir(root: Path, marker: str, names: Sequence[str], hint: str) -> Path:
    """Return ``root`` if ``root/marker`` exists, else the first ``root/<name>`` that has it.

    Lets users pass either the dataset folder itself or the folder that contains it.
    """
    for cand in [root, *(root / n for n in names)]:
        if (cand / marker).exists():
            return cand
    tried = ", ".join(str(root / n / marker) for n in names)
    raise bad(root / marker, "not found" + (f" (also tried {tried})" if tried else ""), hint=hint)


def find_first(dirs: Iterable[Path], names: Sequence[str]) -> Path | None:
    """First existing ``d/name`` over ``dirs`` (outer loop) and ``names`` (inner loop)."""
    seen: set[Path] = set()
    for d in dirs:
        if d in seen:
            continue
        seen.add(d)
        for n in names:
            if (d / n).is_file():
                return d / n
    return None


def is_hidden(name: str) -> bool:
    return name.startswith(".")


def _os_error(path: Path | str, e: OSError) -> DataError:
    """One line for a listing failure: a symlink loop, a permission problem, a vanished file."""
    import errno

    if e.errno == errno.ELOOP:
        return bad(path, "symlink loop (Too many levels of symbolic links)",
                   hint="remove or fix the link")
    return bad(path, f"cannot list ({e.strerror or e})", hint="check the path and its permissions")


def _is_dir(e: os.DirEntry) -> bool:
    try:
        return e.is_dir()
    except OSError as err:
        raise _os_error(e.path, err) from None


def _scandir(path: Path) -> list[os.DirEntry]:
    try:
        with os.scandir(path) as it:
            return sorted(it, key=lambda e: e.name)
    except OSError as e:
        raise _os_error(path, e) from None


def subdirs(path: Path) -> list[Path]:
    """Sorted non-hidden sub-folders of ``path`` (class folders). A symlink whose target is gone
    is a one-line error: it is most likely a class folder, and dropping it silently would
    renumber every class after it."""
    out = []
    for e in _scandir(path):
        if is_hidden(e.name):
            continue
        if _is_dir(e):
            out.append(Path(e.path))
        elif e.is_symlink() and not os.path.exists(e.path):
            raise bad(e.path, f"a symlink to {os.readlink(e.path)}, which leads nowhere (missing, "
                      "or a loop)",
                      hint="fix or remove the link (a class folder it names would be missing)")
    return out


def list_images(path: Path, recursive: bool = True, _parents: frozenset = frozenset(),
                skipped: list[Path] | None = None) -> list[Path]:
    """Sorted image files under ``path`` by extension only (no content check), skipping hidden.
    ``skipped`` (when given) receives the other files, which a caller can say it did not read.

    Followed symlinks that lead back into a folder being listed (``ln -s . again``), or that
    loop among themselves, raise a one-line :class:`DataError` naming the link.
    """
    try:
        real = os.path.realpath(path, strict=True)
    except OSError as e:
        raise _os_error(path, e) from None
    if real in _parents:
        raise bad(path, f"symlink loop: leads back to its parent folder {real}",
                  hint="remove or fix the link")
    parents = _parents | {real}
    out: list[Path] = []
    for e in _scandir(path):
        if is_hidden(e.name):
            continue
        if _is_dir(e):
            if recursive:
                out.extend(list_images(Path(e.path), recursive=True, _parents=parents,
                                       skipped=skipped))
        elif os.path.splitext(e.name)[1].lower() in IMAGE_EXTS:
            out.append(Path(e.path))
        elif skipped is not None:
            skipped.append(Path(e.path))
    return out


def iter_lines(path: Path, hint: str = "") -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, stripped_line)`` skipping blank lines and ``#`` comments."""
    require_file(path, hint)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise bad(path, f"not UTF-8 text ({e})", hint=hint or "replace it with the original file") from None
    for i, raw in enumerate(text.splitlines(), start=1):
        s = raw.strip()
        if s and not s.startswith("#"):
            yield i, s


def image_under(base: Path, rel: str, source: Path, where: str, *, line: int | None = None) -> Path:
    """``base / rel`` for an image path ``rel`` read from a split or list file, refusing one that
    is absolute or has a ``..`` component: such a path left the image folder, so a split file from
    elsewhere could pull any image the user can read into the build. The check is on the text;
    symlinks inside the image folder are the dataset owner's and are followed, as listing does."""
    why = ("empty" if not rel else "absolute" if os.path.isabs(rel)
           else "climbing out with '..'" if ".." in Path(rel).parts else None)
    if why is not None:
        raise bad(source, f"{where}: image path {printable(rel)!r} is {why}", line=line,
                  hint=f"image paths in this file must lie inside {base}: relative, without '..'")
    return base / rel


def parse_int(text: str, path: Path, line: int, what: str, hint: str = "") -> int:
    try:
        return int(text)
    except ValueError:
        raise bad(path, f"{what} '{text}' is not an integer", line=line, hint=hint) from None


def rank_map(ids: Iterable[int]) -> dict[int, int]:
    """Map distinct ids to contiguous 0-based labels in sorted order (identity for 0..K-1)."""
    return {v: i for i, v in enumerate(sorted(set(ids)))}


def finish(name: str, classes: list[str], splits: dict[str, list[Sample]], source: Path,
           extra: dict[str, Any] | None = None) -> DatasetSpec:
    """Validate (non-empty splits, labels in range) and build the :class:`DatasetSpec`.

    Class names that are not valid UTF-8 (folder names with odd bytes) are kept in their
    printable form (``\\xNN`` escapes) so the manifest can hold them."""
    classes = [printable(str(c)) for c in classes]
    for split in splits:
        problem = split_name_problem(split)
        if problem is not None:
            raise bad(source, f"{name}: {problem}", hint="rename the split in the split file")
    if len(set(classes)) != len(classes):
        dup = next(c for c in classes if classes.count(c) > 1)
        raise bad(source, f"{name}: two classes are both named '{dup}'",
                  hint="rename one of the class folders")
    if not classes:
        raise bad(source, f"{name}: no classes found", hint="check that you passed the dataset folder")
    for split, samples in splits.items():
        if not samples:
            raise bad(source, f"{name}: split '{split}' is empty",
                      hint="check the split file / image folders for this split")
        for s in samples:
            if not 0 <= s.label < len(classes):
                raise bad(source, f"{name}: sample {s.display_name()} has label {s.label} outside "
                          f"0..{len(classes) - 1}", hint="check the label/class files")
    return DatasetSpec(name=name, classes=list(classes), splits=splits, extra=dict(extra or {}))


def read_class_path_list(path: Path, label_of: dict[str, int], to_image: Callable[[str, str], Path],
                         hint: str) -> list[Sample]:
    """Read lines ``<class>/<name>[ ...]`` into Samples (first whitespace token is used).

    ``to_image(class, name)`` builds the image path; unknown classes and lines without a
    ``/`` raise a DataError naming the file and line. Missing images are kept.
    """
    samples = []
    for ln, line in iter_lines(path, hint):
        token = line.split()[0]
        cls, sep, name = token.partition("/")
        if not sep or not cls or not name:
            raise bad(path, f"malformed line '{line}'", line=ln, hint="expected '<class>/<file>'")
        if cls not in label_of:
            raise bad(path, f"unknown class '{cls}'", line=ln,
                      hint="the class must be one of the dataset's classes; use the matching split files")
        image_under(path.parent, token, path, "entry", line=ln)  # (to_image joins the parts)
        samples.append(Sample(to_image(cls, name), label_of[cls]))
    if not samples:
        raise bad(path, "lists no images", hint=hint or "use the original split file")
    return samples
