"""Finding the audio files of a library: a recursive walk that follows symlinked folders without
looping, recognises audio by extension or by content, and names files by their path relative to
the library (POSIX separators), sorted, so output is stable across runs and machines."""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass
from pathlib import Path

AUDIO_EXTENSIONS = frozenset({
    ".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".mp2", ".m4a", ".m4b", ".mp4", ".aac",
    ".aif", ".aiff", ".aifc", ".wma", ".webm", ".mka", ".caf", ".w64", ".rf64", ".au", ".snd", ".alac", ".ape",
    ".wv", ".ac3", ".amr", ".3gp",
})


@dataclass(frozen=True)
class FileEntry:
    path: str  # absolute (as reached, symlinks kept)
    rel: str  # relative to the library, '/'-separated
    size: int
    mtime: float


def looks_like_audio(path: str) -> bool:
    """Content sniffing for files without a known extension: common audio container magic."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError:
        return False
    return (head[:4] in (b"RIFF", b"RF64", b"fLaC", b"OggS", b"FORM", b"caff", b".snd", b"wvpk", b"MAC ")
            or head[:3] == b"ID3" or head[4:8] == b"ftyp" or head[:4] == b"\x1aE\xdf\xa3"
            or (len(head) > 1 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0))


def _match(rel: str, patterns: tuple[str, ...]) -> bool:
    name = rel.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatch(rel, p) or fnmatch.fnmatch(name, p) for p in patterns)


def discover(root: str | os.PathLike, include: tuple[str, ...] = (), exclude: tuple[str, ...] = (),
             sniff: bool = True) -> list[FileEntry]:
    """Audio files below ``root`` (or ``root`` itself if it is a file).

    ``include``/``exclude``: glob patterns matched against the relative path or the file name; an
    included pattern admits a file whatever its extension. Unreadable entries are still listed
    (the scan reports them); a symlinked folder seen before (a loop) is not walked again.
    """
    root = Path(root)
    if root.is_file():
        st = root.stat()
        return [FileEntry(str(root), root.name, st.st_size, st.st_mtime)]
    out: list[FileEntry] = []
    seen: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        try:
            st = os.stat(dirpath)
            key = (st.st_dev, st.st_ino)
        except OSError:
            dirnames[:] = []
            continue
        if key in seen:  # a symlink loop or a second way into the same folder
            dirnames[:] = []
            continue
        seen.add(key)
        dirnames.sort()
        for name in filenames:
            full = os.path.join(dirpath, name)
            rel = Path(os.path.relpath(full, root)).as_posix()
            if exclude and _match(rel, exclude):
                continue
            if include:
                if not _match(rel, include):
                    continue
            elif os.path.splitext(name)[1].lower() not in AUDIO_EXTENSIONS and not (sniff and looks_like_audio(full)):
                continue
            try:
                st = os.stat(full)
                size, mtime = st.st_size, st.st_mtime
            except OSError:  # dangling link or vanished: listed, reported as an error row
                size, mtime = -1, 0.0
            out.append(FileEntry(full, rel, size, mtime))
    out.sort(key=lambda e: e.rel)
    return out
