"""Errors for bad user input. The CLI turns each into one line on stderr and exit code 2."""

from __future__ import annotations


class UserError(Exception):
    """Bad input a user can fix (a recipe key, a data path, a model URI); the message says what and how."""
