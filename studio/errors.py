"""User-facing errors: each names the file or setting, what was wrong and what to do."""


class StudioError(Exception):
    """An error meant for the user. The CLI prints its message without a traceback.

    The message speaks the command line's language (flags such as ``--out``). Where the web UI can meet
    the same error and the fix is worded differently there (controls instead of flags), the raising code
    gives that wording as ``browser``; :func:`message_for` picks the form for where the person is.
    """

    def __init__(self, message: str = "", *, browser: str | None = None):
        super().__init__(message)
        self.browser = browser


def message_for(error: BaseException, surface: str) -> str:
    """The error's message for ``surface``: ``"cli"`` (flags) or ``"browser"`` (controls)."""
    if surface == "browser" and getattr(error, "browser", None):
        return str(error.browser)
    return str(error)


class ConfigError(StudioError):
    """A setting, recipe or override is invalid."""


class ModelLoadError(StudioError):
    """A base model or backbone could not be resolved or loaded."""


class SubjectError(StudioError):
    """Subject images could not be prepared."""


class PickleRefusedError(StudioError):
    """A pickle-based file was given without the explicit opt-in."""


class ConfinementError(StudioError):
    """A path from a user, recipe, subject file or the API resolves outside the folders it may use."""


class RunBusyError(StudioError):
    """Another process is training, resuming, evaluating or exporting the same run."""


class DiskFullError(StudioError):
    """The disk (or quota) filled up while Studio was writing; what was written was rolled back."""


NO_SPACE_ERRNOS = (28, 122)  # ENOSPC, EDQUOT


def is_disk_full(error: BaseException) -> bool:
    """Whether ``error`` (an OSError, or a shutil.Error wrapping some) says the disk or quota is full."""
    if isinstance(error, OSError) and error.errno in NO_SPACE_ERRNOS:
        return True
    return "No space left on device" in str(error) or "Disk quota exceeded" in str(error)


def disk_full_error(error: BaseException, what: str, where: object) -> DiskFullError:
    """A user-facing error for a write that ran out of space."""
    return DiskFullError(
        f"Ran out of disk space while writing {what} to {where} ({getattr(error, 'strerror', None) or error}). "
        "Nothing partial was kept; free some space (or choose a folder on another disk) and run the same command again."
    )
