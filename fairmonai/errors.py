"""Error types. Every input error names the file, the row and the field it is about."""

from __future__ import annotations

from os import PathLike

__all__ = ["FairMonaiError", "InputError", "EmptyGroupError", "located_cause"]


class FairMonaiError(Exception):
    """Base class of fairmonai's own errors."""


class InputError(FairMonaiError, ValueError):
    """Bad input data: a manifest row, an image file, a DICOM tag, a cine volume.

    The message starts with where the problem is (``file, row N, field 'x': ...``) so that a user can
    go straight to it; the parts are also kept as attributes for programmatic use.
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | PathLike | None = None,
        row: int | str | None = None,
        field: str | None = None,
    ) -> None:
        self.path = None if path is None else str(path)
        self.row = row
        self.field = field
        self.reason = message
        where = [p for p in (self.path, None if row is None else f"row {row}") if p]
        if field is not None:
            where.append(f"field {field!r}")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)


class EmptyGroupError(FairMonaiError, ValueError):
    """A group that must have members (to balance, to reuse its masks, to evaluate) has none."""


def located_cause(exc: BaseException) -> BaseException:
    """The first :class:`InputError` in ``exc``'s cause chain, else ``exc`` itself.

    MONAI's ``Compose`` wraps a transform's exception in ``RuntimeError("applying transform ...")``;
    the located input error underneath is the one a user needs to read.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, InputError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return exc
