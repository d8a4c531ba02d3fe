"""Exceptions shared across the package.

Library code speaks of arguments and config fields, never of command-line flags: it raises
`SettingError` naming the setting at fault. The command line (`guided_diffusion.cli`) turns that into a
one-line message that names the flag, which for most settings is `--<setting>`.
"""


class UserError(ValueError):
    """Bad input from the user. The CLI prints the message as one line (no traceback); it names the
    problem and the fix."""


class SettingError(UserError):
    """A value the library cannot use. `setting` is the argument or config field that holds it; the
    message names it in the library's terms (e.g. "timestep_respacing 'ddim2000' asks for ...")."""

    def __init__(self, setting: str, message: str):
        super().__init__(message)
        self.setting = setting
