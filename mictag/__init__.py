"""mictag: tag the instruments playing in every file of an audio library.

Importing mictag imports neither torch nor any inference backend: those load only when a
command or API call needs them. It does turn off, before they load, the telemetry of the libraries
mictag uses (:mod:`mictag.privacy`).
"""

from mictag.privacy import keep_quiet

keep_quiet()  # before any library that could phone home loads (see mictag.privacy)

__version__ = "0.1.0"

__all__ = ["__version__", "Tagger"]


def __getattr__(name: str):
    # Lazy: `import mictag` stays instant and free of onnxruntime until the API is used.
    if name == "Tagger":
        from mictag.api import Tagger

        return Tagger
    raise AttributeError(f"module 'mictag' has no attribute {name!r}")
