"""User-facing errors: each names the file or setting, what was wrong and what to do."""


class StudioError(Exception):
    """An error meant for the user. The CLI prints its message without a traceback."""


class ConfigError(StudioError):
    """A setting, recipe or override is invalid."""


class ModelLoadError(StudioError):
    """A base model or backbone could not be resolved or loaded."""


class SubjectError(StudioError):
    """Subject images could not be prepared."""


class PickleRefusedError(StudioError):
    """A pickle-based file was given without the explicit opt-in."""
