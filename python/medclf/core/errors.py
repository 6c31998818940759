"""One exception type for every problem a user can fix.

The CLI prints the message (no traceback) and exits with status 1, so each message
must name the offending file or column and say what to do about it.
"""


class MedclfError(Exception):
    """A user-fixable problem: bad input, missing file, impossible request."""


class UnreadableImageError(MedclfError):
    """One image could not be decoded. Stages that read many images warn, skip and count it."""

    def __init__(self, path, reason):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: cannot read image ({reason})")

    def __reduce__(self):
        # Worker processes return it in place of an image: it must survive pickling.
        return type(self), (self.path, self.reason)
