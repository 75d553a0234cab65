"""Typed errors of mictag. Each message names the thing at fault and what to do about it.

The CLI turns these into one line on stderr and a non-zero exit; library callers catch them.
"""

from __future__ import annotations


class MictagError(Exception):
    """Base class: a problem the user can act on (never a bug in mictag)."""


class CheckpointError(MictagError):
    """A model checkpoint is missing, unreadable, or does not fit the model it is loaded into."""


class ModelNotFoundError(MictagError):
    """A model or checkpoint could not be found locally and could not be downloaded."""


class ConfigError(MictagError):
    """An option or configuration value is invalid. With ``option``, the message is "<option>
    <problem>", and a front end can name the option its own way (the CLI: its flag)."""

    def __init__(self, message: str, option: str | None = None):
        super().__init__(f"{option} {message}" if option else message)
        self.option, self.problem = option, message


class ModelError(MictagError):
    """A model file that cannot be used: missing, foreign, or without mictag metadata."""
