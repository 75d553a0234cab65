"""Per-format tag writers: one small class per tag system, behind one registry.

- Vorbis comments (FLAC, Ogg Vorbis, Opus): a field occurs once per value; names are
  case-insensitive.
- ID3v2.4 ``TXXX`` frames (MP3, and WAV / AIFF through their ``id3 `` chunk): one frame holding
  several values, which only v2.4 can (v2.3 joins them with "/"), so a file is saved as v2.4.
- MP4 freeform atoms (M4A/MP4): ``----:com.apple.iTunes:NAME``, one data atom per value.

Every writer has the same verbs (read a field, list the fields, set or delete one, save), so
:mod:`mictag.filetags.write` never asks which format it holds. mutagen rewrites only metadata
blocks, chunks or atoms (and the offsets that point past them): the audio is never decoded or
re-encoded, and every field mictag does not set is left as it was.
"""

from __future__ import annotations

import os

import mutagen
from mutagen.aiff import AIFF
from mutagen.flac import FLAC
from mutagen.id3 import TXXX, Encoding
from mutagen.mp3 import MP3
from mutagen.mp4 import MP4, AtomDataType, MP4FreeForm
from mutagen.oggopus import OggOpus
from mutagen.oggvorbis import OggVorbis
from mutagen.wave import WAVE

from mictag.errors import MictagError

SUPPORTED = "FLAC, Ogg Vorbis, Opus, MP3, M4A/MP4, WAV and AIFF"


class TagFileError(MictagError):
    """A file's tags could not be read or saved (corrupt, unreadable, not writable)."""


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return text if text else type(exc).__name__


class TagStore:
    """The tags of one open file. ``set(name, [])`` deletes the field."""

    format_name = "?"
    case_insensitive = False  # whether ``NAME`` and ``name`` are one field

    def __init__(self, audio: mutagen.FileType):
        self.audio = audio
        if audio.tags is None:  # no tag block yet: mutagen adds an empty one, written on save
            audio.add_tags()

    def get(self, name: str) -> list[str]:
        raise NotImplementedError

    def names(self) -> set[str]:
        raise NotImplementedError

    def set(self, name: str, values: list[str]) -> None:
        raise NotImplementedError

    def _save(self) -> None:
        self.audio.save()

    def save(self) -> None:
        try:
            self._save()
        except (mutagen.MutagenError, OSError) as exc:
            raise TagFileError(f"cannot save its tags: {_reason(exc)}") from None


class VorbisComments(TagStore):
    """FLAC, Ogg Vorbis, Opus."""

    case_insensitive = True

    def get(self, name: str) -> list[str]:
        return list(self.audio.tags.get(name, []))  # mutagen matches Vorbis names case-insensitively

    def names(self) -> set[str]:
        return {key.upper() for key in self.audio.tags.keys()}

    def set(self, name: str, values: list[str]) -> None:
        if values:
            self.audio.tags[name] = list(values)  # replaces every instance of the field, whatever its case
        elif name in self.audio.tags:
            del self.audio.tags[name]


class ID3Frames(TagStore):
    """MP3, WAV, AIFF: user text frames ``TXXX:NAME``."""

    def get(self, name: str) -> list[str]:
        return [str(text) for frame in self.audio.tags.getall(f"TXXX:{name}") for text in frame.text]

    def names(self) -> set[str]:
        return {frame.desc for frame in self.audio.tags.getall("TXXX")}

    def set(self, name: str, values: list[str]) -> None:
        self.audio.tags.delall(f"TXXX:{name}")
        if values:
            self.audio.tags.add(TXXX(encoding=Encoding.UTF8, desc=name, text=list(values)))

    def _save(self) -> None:
        self.audio.save(v2_version=4)


FREEFORM = "----:com.apple.iTunes:"


class MP4Freeform(TagStore):
    """M4A/MP4: freeform atoms under iTunes' own namespace, which every MP4 tagger reads."""

    def get(self, name: str) -> list[str]:
        return [bytes(value).decode("utf-8", "replace") for value in self.audio.tags.get(FREEFORM + name, [])]

    def names(self) -> set[str]:
        return {key[len(FREEFORM):] for key in self.audio.tags.keys() if key.startswith(FREEFORM)}

    def set(self, name: str, values: list[str]) -> None:
        if values:
            self.audio.tags[FREEFORM + name] = [MP4FreeForm(v.encode("utf-8"), dataformat=AtomDataType.UTF8)
                                                for v in values]
        else:
            self.audio.tags.pop(FREEFORM + name, None)


# mutagen's file class -> (what to call it, its tag writer)
WRITERS: dict[type, tuple[str, type[TagStore]]] = {
    FLAC: ("FLAC", VorbisComments),
    OggVorbis: ("Ogg Vorbis", VorbisComments),
    OggOpus: ("Opus", VorbisComments),
    MP3: ("MP3", ID3Frames),
    WAVE: ("WAV", ID3Frames),
    AIFF: ("AIFF", ID3Frames),
    MP4: ("MP4", MP4Freeform),
}


def open_tags(path: str | os.PathLike) -> TagStore | None:
    """The tags of the file at ``path``; None when it is in no format of :data:`WRITERS`.

    Raises :class:`TagFileError` when the file looks like one of them but mutagen cannot read it.
    """
    try:
        # The type is decided by mutagen's own sniffing (header first, then extension).
        audio = mutagen.File(path, options=list(WRITERS))
    except (mutagen.MutagenError, OSError) as exc:
        raise TagFileError(f"cannot read its tags: {_reason(exc)}") from None
    if audio is None:
        return None
    name, writer = WRITERS[type(audio)]
    store = writer(audio)
    store.format_name = name
    return store


def describe_format(path: str | os.PathLike) -> str:
    """What a file no writer takes is, for the line that skips it: mutagen's name for its format
    (``ASF``, ``OggFLAC``), else its suffix."""
    try:
        audio = mutagen.File(path)
    except (mutagen.MutagenError, OSError):
        audio = None
    if audio is not None:
        return type(audio).__name__
    return os.path.splitext(os.fspath(path))[1].lower() or "no suffix, not recognised"
