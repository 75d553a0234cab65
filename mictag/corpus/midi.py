"""A Standard MIDI File writer (format 1, one track per part): just what the corpus needs.

Note times are seconds. Files are written at 60 beats per minute, so a beat is a second and the
file's timing is the note list's."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

TICKS_PER_BEAT = 480
DRUM_CHANNEL = 9  # General MIDI channel 10
# Controllers every part starts with: volume is the part's; expression full; breath (CC 2) at 100,
# which MuseScore General's "Expr." presets read as their dynamics (silent without it).
START_CONTROLLERS = ((11, 127), (2, 100))


@dataclass(frozen=True)
class Note:
    start: float  # seconds
    length: float  # seconds
    pitch: int
    velocity: int = 90


@dataclass
class Part:
    channel: int
    program: int = 0
    bank: int = 0
    notes: list[Note] = field(default_factory=list)
    volume: int = 100


def _varlen(value: int) -> bytes:
    out = [value & 0x7F]
    value >>= 7
    while value:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    return bytes(reversed(out))


def _track(events: list[tuple[int, bytes]]) -> bytes:
    events = sorted(events, key=lambda e: (e[0], e[1][0] & 0xF0 == 0x90))  # note-offs before note-ons at a tick
    data, now = bytearray(), 0
    for tick, message in events:
        data += _varlen(tick - now) + message
        now = tick
    data += b"\x00\xff\x2f\x00"  # end of track
    return b"MTrk" + struct.pack(">I", len(data)) + bytes(data)


def write_midi(path: str | Path, parts: list[Part]) -> Path:
    """Write ``parts`` (each on its own channel) as a format-1 MIDI file at 60 bpm."""
    path = Path(path)
    tempo = 1_000_000  # microseconds per beat: one beat per second
    tracks = [_track([(0, b"\xff\x51\x03" + tempo.to_bytes(3, "big"))])]
    for part in parts:
        ch = part.channel & 0x0F
        events: list[tuple[int, bytes]] = [
            (0, bytes([0xB0 | ch, 0, (part.bank >> 7) & 0x7F])),  # bank select MSB
            (0, bytes([0xB0 | ch, 32, part.bank & 0x7F])),  # bank select LSB
            (0, bytes([0xC0 | ch, part.program & 0x7F])),
            (0, bytes([0xB0 | ch, 7, part.volume & 0x7F])),
            *((0, bytes([0xB0 | ch, cc, value])) for cc, value in START_CONTROLLERS),
        ]
        for n in part.notes:
            on = int(round(n.start * TICKS_PER_BEAT))
            off = max(on + 1, int(round((n.start + n.length) * TICKS_PER_BEAT)))
            events.append((on, bytes([0x90 | ch, n.pitch & 0x7F, max(1, min(127, n.velocity))])))
            events.append((off, bytes([0x80 | ch, n.pitch & 0x7F, 0])))
        tracks.append(_track(events))
    header = b"MThd" + struct.pack(">IHHH", 6, 1, len(tracks), TICKS_PER_BEAT)
    path.write_bytes(header + b"".join(tracks))
    return path
