"""The one exception type users see.

Anything raised as ``DatamodelsError`` is a problem with the user's input or
environment (a bad config key, a corrupt store, a lock held by another sweep).
The CLI prints its message on one line and exits non-zero; everything else is a
bug and keeps its traceback.
"""


class DatamodelsError(Exception):
    """A problem the user can fix, described in one line."""
