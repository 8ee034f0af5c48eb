"""Resolving a Future that may already be resolved: the batcher's and the pipeline's one way to answer."""

from __future__ import annotations

from concurrent.futures import Future, InvalidStateError
from typing import TypeVar

T = TypeVar("T")


def settle(future: Future[T], result: T | None = None, error: BaseException | None = None) -> None:
    """Resolve `future` unless it already is (cancelled by its caller, or stopped while its answer was on the way)."""
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]
    except InvalidStateError:
        pass
