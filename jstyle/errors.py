"""Error types whose message is one line saying what is wrong and what to do about it.

Command-line entry points catch `JStyleError`, print `error: <message>` and exit with status 2.
"""

__all__ = ["JStyleError", "ConfigError", "WeightsError", "InputError"]


class JStyleError(Exception):
    """Base class: a user-fixable problem, reported as one line."""


class ConfigError(JStyleError):
    """A config.json (or argument) asks for something jstyle does not support or is malformed."""


class WeightsError(JStyleError):
    """A weights file is missing, unreadable, truncated, pickled, or does not fit the model."""


class InputError(JStyleError):
    """A user input (image, folder, prompt file, number) is unusable."""
