"""The errors a study ends with, each one line for the user: a mistake in
the request or a bad state found before anything starts (`UsageError`, exit
2), and storage failing mid-study (`StorageError`, exit 3)."""


class UsageError(Exception):
    """A mistake in the request or a bad state found before starting; one line."""


class StorageError(OSError):
    """The disk filled up or storage went away mid-study; one line for the user."""
