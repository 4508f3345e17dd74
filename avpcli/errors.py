"""Domain errors with messages meant for the user; the CLI turns them into exit code 1."""


class AvpError(Exception):
    """Base class: the message is shown to the user as is."""


class KeyFileError(AvpError):
    """A key file is missing, corrupt, foreign or does not match what was asked for."""


class TargetError(AvpError):
    """An unknown target, or a target whose weights cannot be found or loaded."""


class WeightsUnavailableError(TargetError):
    """Weights must be downloaded but the network is unreachable (or the checksum failed)."""


class ImageError(AvpError):
    """One input image cannot be used; the run records it and goes on."""


class NotModelInput(ImageError):
    """An image that decodes but cannot be the model's input (too small, animated, no face found): a run
    that seals still seals the file (issue #23)."""


class NoFaceError(NotModelInput):
    """Alignment found no face in an image."""


class UsageError(AvpError):
    """Arguments that make no sense together (exit code 2)."""
