"""Listing the files of a data folder, symbolic links included, safely.

The policy (README, "When something goes wrong"): every image file is read once, whatever
paths lead to it. A symbolic link is followed only when its target lies inside the data
folder and has not been read through another path; a link to a folder that contains the
link (a loop), a link that leaves the data folder and a dangling link are skipped and
counted in the run's notes. Hidden files and folders (names starting with ".") are not
listed, but a link may lead into a hidden folder. A folder below the data folder that
holds a cache tag (``CACHEDIR.TAG``, https://bford.info/cachedir/: fassl's decode cache
writes one, as do other tools' caches) is skipped and named in the notes: a
``data.cache_dir`` inside the data folder must not add its extracted archives to the data.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field

from fassl.errors import printable

MAX_NAMED = 5  # links named individually in a report line

# The Cache Directory Tagging Specification: a file of this name whose content starts
# with this signature marks its folder as a cache (backup and archive tools skip it).
CACHE_TAG = "CACHEDIR.TAG"
CACHE_TAG_SIGNATURE = b"Signature: 8a477f597d28d172789f06886806bc55"


def is_hidden(name: str) -> bool:
    return name.startswith(".")


def is_tagged_cache(folder: str | os.PathLike[str]) -> bool:
    """Whether ``folder`` holds a valid ``CACHEDIR.TAG`` (its first bytes the signature)."""
    try:
        with open(os.path.join(folder, CACHE_TAG), "rb") as f:
            return f.read(len(CACHE_TAG_SIGNATURE)) == CACHE_TAG_SIGNATURE
    except OSError:  # no tag (the usual case), or one that cannot be read
        return False


@dataclass
class FolderScan:
    """Relative paths (``/``-separated, sorted) of the files found, and the skipped links."""

    files: list[str] = field(default_factory=list)
    dangling: list[str] = field(default_factory=list)
    outside: list[str] = field(default_factory=list)
    loops: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)  # links to what was already read
    caches: list[str] = field(default_factory=list)  # folders holding a CACHEDIR.TAG

    def report(self, root: str | os.PathLike[str]) -> list[str]:
        """One line per kind of skipped link or folder, saying why, for the run's notes."""
        outside = " leaving the data folder (only links whose targets lie inside it are followed)"
        kinds = (
            (self.dangling, "dangling symbolic link", ""),
            (self.outside, "symbolic link", outside),
            (self.loops, "symbolic link", " looping back to a parent folder"),
            (self.duplicates, "symbolic link", " to files already read through another path"),
            (self.caches, "cache folder", f" (holding a {CACHE_TAG})"),
        )
        lines = []
        for names, what, why in kinds:
            if names:
                shown = ", ".join(printable(n) for n in names[:MAX_NAMED])
                more = f" and {len(names) - MAX_NAMED} more" if len(names) > MAX_NAMED else ""
                plural = "" if len(names) == 1 else "s"
                lines.append(
                    f"skipped {len(names)} {what}{plural}{why} in {printable(root)}: {shown}{more}"
                )
        return lines


@dataclass
class _Walk:
    """State of one scan: what was read (by real path) and the links still to resolve."""

    real_root: str
    scan: FolderScan
    seen_files: set[str] = field(default_factory=set)
    seen_dirs: set[str] = field(default_factory=set)
    links: list[tuple[str, str]] = field(default_factory=list)  # (relative, absolute)


def _walk_tree(state: _Walk, top: str, real_top: str, prefix: str) -> None:
    """Files below ``top`` without following links; links are queued for ``_resolve``."""
    stack = [(top, real_top, prefix)]
    while stack:
        path, real, rel = stack.pop()
        if real in state.seen_dirs:  # reached through a link before
            continue
        state.seen_dirs.add(real)
        with os.scandir(path) as entries:
            for entry in entries:
                if is_hidden(entry.name):
                    continue
                child_rel = rel + entry.name
                if entry.is_symlink():
                    state.links.append((child_rel, entry.path))
                elif entry.is_dir(follow_symlinks=False):
                    if is_tagged_cache(entry.path):
                        state.scan.caches.append(child_rel)
                    else:
                        stack.append((entry.path, os.path.join(real, entry.name), child_rel + "/"))
                elif entry.is_file(follow_symlinks=False):
                    real_file = os.path.join(real, entry.name)
                    if real_file not in state.seen_files:
                        state.scan.files.append(child_rel)
                        state.seen_files.add(real_file)


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _resolve(state: _Walk, rel: str, path: str) -> None:
    """Follow one link, or record why it is skipped."""
    scan = state.scan
    try:
        st = os.stat(path)
    except OSError as err:
        (scan.loops if err.errno == errno.ELOOP else scan.dangling).append(rel)
        return
    target = os.path.realpath(path)
    if not _inside(target, state.real_root):
        scan.outside.append(rel)
    elif stat.S_ISDIR(st.st_mode):
        parent = os.path.realpath(os.path.dirname(path))
        if _inside(parent, target):
            scan.loops.append(rel)
        elif target in state.seen_dirs:
            scan.duplicates.append(rel)
        elif is_tagged_cache(target):
            scan.caches.append(rel)
        else:
            _walk_tree(state, path, target, rel + "/")
    elif target in state.seen_files:
        scan.duplicates.append(rel)
    elif stat.S_ISREG(st.st_mode):
        scan.files.append(rel)
        state.seen_files.add(target)


def scan_folder(root: str | os.PathLike[str]) -> FolderScan:
    """Every non-hidden file below ``root`` under the link policy of this module.

    Plain strings rather than Path objects: listing and sorting 60k files stays well
    under a second, which matters because every cached load lists the folder again.
    """
    root = os.fspath(root)
    state = _Walk(os.path.realpath(root), FolderScan())
    _walk_tree(state, root, state.real_root, "")
    while state.links:  # links inside linked folders are appended as they are met
        batch, state.links = sorted(state.links), []
        for rel, path in batch:
            _resolve(state, rel, path)
    state.scan.files.sort()
    state.scan.caches.sort()
    return state.scan


def list_files(root: str | os.PathLike[str]) -> list[str]:
    """The files ``scan_folder`` finds, as sorted relative paths."""
    return scan_folder(root).files
