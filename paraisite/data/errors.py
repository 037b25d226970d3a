"""Errors of the data layer that light modules raise without importing the graph libraries."""

from __future__ import annotations


class GraphError(ValueError):
    """A structure cannot be turned into a usable graph; the message names the structure and the problem."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind
