"""The one exception type a user of LiverLocalization sees."""


class InputError(ValueError):
    """Bad input: the message names the problem and what to do about it.

    Raised for unreadable files, volumes that are not CT, missing or absurd landmarks,
    masks of another geometry, corrupt weight files. The CLI prints the message without a traceback;
    the Slicer module shows it in an error dialog.
    """
