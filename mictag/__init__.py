"""mictag: tag the instruments playing in every file of an audio library.

Importing mictag imports neither torch nor any inference backend: those load only when a
command or API call needs them.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
