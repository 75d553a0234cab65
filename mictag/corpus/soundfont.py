"""The presets of a SoundFont (SF2, or SF3 with compressed samples): read from its RIFF ``phdr``
records, without loading the samples."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from mictag.errors import MictagError


@dataclass(frozen=True)
class Preset:
    bank: int
    program: int
    name: str


class SoundFontError(MictagError):
    """A file that is not a usable SoundFont."""


def presets(path: str | Path) -> list[Preset]:
    """Every preset in the file, sorted by (bank, program)."""
    with open(path, "rb") as f:
        head = f.read(12)
        if head[:4] != b"RIFF" or head[8:12] != b"sfbk":
            raise SoundFontError(f"{path} is not a SoundFont (no RIFF sfbk header)")
        while True:
            chunk = f.read(8)
            if len(chunk) < 8:
                raise SoundFontError(f"{path} has no preset list (pdta)")
            cid, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            if cid == b"LIST" and f.read(4) == b"pdta":
                end = f.tell() + size - 4
                while f.tell() < end:
                    sub = f.read(8)
                    sid, ssize = sub[:4], struct.unpack("<I", sub[4:])[0]
                    if sid == b"phdr":
                        data = f.read(ssize)
                        out = []
                        for i in range(ssize // 38 - 1):  # the last record is the terminal "EOP"
                            rec = data[i * 38 : (i + 1) * 38]
                            name = rec[:20].split(b"\0")[0].decode("latin-1").strip()
                            program, bank = struct.unpack("<HH", rec[20:24])
                            out.append(Preset(bank, program, name))
                        return sorted(out, key=lambda p: (p.bank, p.program))
                    f.seek(ssize + (ssize & 1), 1)
                raise SoundFontError(f"{path} has no preset headers (phdr)")
            f.seek(size + (size & 1) - (4 if cid == b"LIST" else 0), 1)
