"""Debian packages as sample sources: downloaded with ``apt-get download`` (no root; nothing is
installed) and unpacked with ``dpkg-deb -x`` into a cache, once.

Some packages are kept for an independent evaluation and must never reach training or tuning:
:data:`EVALUATION_ONLY`. :func:`fetch` refuses them, and so does every path check of the corpus.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from mictag.errors import MictagError

EVALUATION_ONLY = ("fluid-soundfont-gm", "fluid-soundfont-gs", "fluidr3mono-gm-soundfont", "freepats", "hydrogen-data")


class FetchError(MictagError):
    """apt-get or dpkg-deb is missing or failed; the message is one line."""


def _run(cmd: list[str], cwd: Path) -> None:
    try:
        subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, text=True)
    except FileNotFoundError:
        raise FetchError(f"{cmd[0]} not found: this needs a Debian/Ubuntu system (apt-get, dpkg-deb)") from None
    except subprocess.CalledProcessError as exc:
        lines = (exc.stderr or exc.stdout or "").strip().splitlines() or [f"exit status {exc.returncode}"]
        raise FetchError(f"{' '.join(cmd)} failed: {lines[-1]}") from None


def refuse_evaluation_only(name: str) -> None:
    if name in EVALUATION_ONLY:
        raise FetchError(f"{name} is kept for an independent evaluation: it is never used to build training data")


def fetch(names, cache_dir: Path) -> dict[str, Path]:
    """{package: unpacked root} for each package, downloaded and unpacked in ``cache_dir`` unless it
    already is there (roots are named like their .deb: <package>_<version>_<arch>)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    roots = {}
    for name in names:
        refuse_evaluation_only(name)
        unpacked = sorted(p for p in cache_dir.glob(f"{name}_*") if p.is_dir() and p.suffix != ".partial")
        if not unpacked:
            if not list(cache_dir.glob(f"{name}_*.deb")):
                _run(["apt-get", "download", name], cache_dir)
            debs = sorted(cache_dir.glob(f"{name}_*.deb"))
            if not debs:
                raise FetchError(f"apt-get download {name} left no .deb in {cache_dir}")
            partial = cache_dir / f"{debs[-1].stem}.partial"  # renamed once complete
            shutil.rmtree(partial, ignore_errors=True)
            _run(["dpkg-deb", "-x", str(debs[-1]), str(partial)], cache_dir)
            unpacked = [partial.rename(cache_dir / debs[-1].stem)]
        roots[name] = unpacked[-1]
    return roots


def version(root: Path) -> str:
    """The package version from an unpacked root's name."""
    parts = root.name.split("_")
    return parts[1] if len(parts) >= 3 else "unknown"


def licence(root: Path, name: str) -> str:
    """The licences named in the package's copyright file (DEP-5 "License:" fields), or its first line."""
    path = root / "usr" / "share" / "doc" / name / "copyright"
    try:
        text = path.read_text("utf-8", errors="replace")
    except OSError:
        return "no copyright file in the package"
    found = sorted({m.strip() for m in re.findall(r"^Licen[cs]e:[ \t]*(\S.*)$", text, re.M)})
    if found:
        return ", ".join(found)
    # Not machine-readable: the first line that names a licence, else the first line.
    named = re.search(r"^.*\b(MIT|ISC|BSD|Apache|MPL|L?GPL|CC[- ]?BY|CC0|public domain)\b.*$", text, re.M | re.I)
    return (named.group(0) if named else text.strip().splitlines()[0]).strip()[:200]
