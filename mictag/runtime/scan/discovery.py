"""Finding the audio files of a library: a recursive walk that follows symlinked folders without
looping, recognises audio by extension or by content, and names files by their path relative to
the library (POSIX separators), sorted, so output is stable across runs and machines.

Only regular files are listed. Named pipes, sockets and devices (also behind a symlink: one to
``/dev/zero``, to a FIFO) are never opened, since opening or reading one can block for ever (a FIFO
waits for a writer); they are reported as :class:`Skipped`, with folders that cannot be read.
"""

from __future__ import annotations

import fnmatch
import os
import stat
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


@dataclass(frozen=True)
class Skipped:
    """Something in the library that is not listed, and why (a FIFO, a socket, a device, a folder
    that cannot be read)."""

    rel: str
    why: str


SPECIAL_KINDS = {stat.S_IFIFO: "a named pipe (FIFO)", stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a character device",
                 stat.S_IFBLK: "a block device"}


def special_kind(mode: int) -> str | None:
    """What a file that is not a regular one is ("a named pipe (FIFO)", ...), or None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    return SPECIAL_KINDS.get(stat.S_IFMT(mode), "not a regular file")


def looks_like_audio(path: str) -> bool:
    """Content sniffing for files without a known extension: common audio container magic. Opened
    without blocking, and read only if it is a regular file."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return False
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        head = os.read(fd, 16)
    except OSError:
        return False
    finally:
        os.close(fd)
    return (head[:4] in (b"RIFF", b"RF64", b"fLaC", b"OggS", b"FORM", b"caff", b".snd", b"wvpk", b"MAC ")
            or head[:3] == b"ID3" or head[4:8] == b"ftyp" or head[:4] == b"\x1aE\xdf\xa3"
            or (len(head) > 1 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0))


def _match(rel: str, patterns: tuple[str, ...]) -> bool:
    name = rel.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatch(rel, p) or fnmatch.fnmatch(name, p) for p in patterns)


def discover(root: str | os.PathLike, include: tuple[str, ...] = (), exclude: tuple[str, ...] = (),
             sniff: bool = True, skipped: list[Skipped] | None = None) -> list[FileEntry]:
    """Audio files below ``root`` (or ``root`` itself if it is a file).

    ``include``/``exclude``: glob patterns matched against the relative path or the file name; an
    included pattern admits a file whatever its extension. Unreadable entries are still listed
    (the scan reports them); a symlinked folder seen before (a loop) is not walked again. What is
    passed over without being opened (special files, folders that cannot be read) is appended to
    ``skipped``.
    """
    root = Path(root)
    skipped = skipped if skipped is not None else []
    if not root.is_dir():
        st = root.stat()
        kind = special_kind(st.st_mode)
        if kind:
            skipped.append(Skipped(root.name, f"{kind}, not an audio file"))
            return []
        return [FileEntry(str(root), root.name, st.st_size, st.st_mtime)]
    out: list[FileEntry] = []
    seen: set[tuple[int, int]] = set()

    def unreadable(exc: OSError) -> None:
        where = Path(os.path.relpath(exc.filename, root)).as_posix() if exc.filename else "?"
        skipped.append(Skipped(where, f"a folder that cannot be read ({exc.strerror or exc})"))

    for dirpath, dirnames, filenames in os.walk(root, followlinks=True, onerror=unreadable):
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
            named = _match(rel, include) if include else os.path.splitext(name)[1].lower() in AUDIO_EXTENSIONS
            if include and not named:
                continue
            try:
                st = os.stat(full)  # through a symlink: what it points at
            except OSError:  # dangling link or vanished: listed when named as audio, reported as an error row
                if named:
                    out.append(FileEntry(full, rel, -1, 0.0))
                continue
            kind = special_kind(st.st_mode)
            if kind is not None:
                skipped.append(Skipped(rel, kind))
                continue
            if not named and not (sniff and looks_like_audio(full)):
                continue
            out.append(FileEntry(full, rel, st.st_size, st.st_mtime))
    out.sort(key=lambda e: e.rel)
    skipped.sort(key=lambda s: s.rel)
    return out
