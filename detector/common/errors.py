"""The one exception type for mistakes a user can fix (a bad file, value or option).

Command-line entry points catch :class:`UserError`, print its message on one line and exit
with status 2; everything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A problem with the user's input; the message names the file or value at fault."""


class ImageReadError(UserError):
    """An image file that is missing, empty, truncated or not an image."""


class AnnotationError(UserError):
    """A malformed or inconsistent annotation file or split list."""
