"""Typed errors raised by the core. The CLI turns each into one line on stderr and exit code 2."""

from __future__ import annotations


class IwdctlError(Exception):
    """Base class: a problem with what the user asked for, not a bug."""


class InputError(IwdctlError):
    """A path, image, folder or CSV that cannot be used."""


class ModelError(IwdctlError):
    """An unknown model, missing weights or a checkpoint that does not fit."""


class ClassNameError(IwdctlError):
    """A class name, index or wnid that the model does not know."""
