"""Errors the core raises for users to read.

Adapters turn :class:`ForestCarbonError` into ``QgsProcessingException``; its message
says what is wrong and what to do, and is shown to the user as it is.
"""


class ForestCarbonError(Exception):
    """A problem with the user's input or environment, explained for the user."""


class Cancelled(ForestCarbonError):
    """The user cancelled the run; outputs were not written."""

    def __init__(self, message: str = "Cancelled by the user; no output was written."):
        super().__init__(message)


class MissingDependency(ForestCarbonError):
    """A Python package the function needs is not importable in this Python."""
