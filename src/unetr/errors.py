"""Errors that users cause; the CLI prints them as one line and exits with code 2."""


class UnetrError(Exception):
    """A problem with the user's input (file, dataset, option) that a message can explain."""


class DataError(UnetrError, ValueError):
    """A file or dataset that cannot be used; the message names the file and the problem."""


class CheckpointError(UnetrError, ValueError):
    """A checkpoint that does not fit the model (lists missing/unexpected keys and wrong shapes) or is unsafe."""
