"""Errors that the CLI turns into one clear line and an exit code, never a traceback."""

from __future__ import annotations

import re
from typing import Any, Callable


class UserError(Exception):
    """Bad input from the user: a file, field or option to fix. Exit code 2."""

    exit_code = 2


class OptionError(UserError):
    """A bad option value. The library names the option by its config field (`merge_form`); the CLI writes it
    as its flag (`--merge-form`). `options` maps each named field to its value (or to `OptionError.NAME_ONLY`);
    the message may name other options as <name>."""

    NAME_ONLY = object()

    def __init__(self, options: str | dict[str, Any], message: str):
        self.options = {options: self.NAME_ONLY} if isinstance(options, str) else dict(options)
        self.message = message
        super().__init__(self.render(lambda name: name))

    def render(self, spell: Callable[[str], str]) -> str:
        """The message with each option spelled by `spell` (the CLI: name -> --flag-name)."""
        named = " ".join(spell(k) if v is self.NAME_ONLY else f"{spell(k)} {v}" for k, v in self.options.items())
        values = any(v is not self.NAME_ONLY for v in self.options.values())
        message = re.sub(r"<([a-z_]+)>", lambda m: spell(m[1]), self.message)
        return f"{named}: {message}" if values else f"{named} {message}"  # "--out is required: ..."


class NumericalError(Exception):
    """A non-finite loss or gradient stopped the run; the last good checkpoint is intact. Exit code 3."""

    exit_code = 3
