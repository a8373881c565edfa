"""A back-pointer that does not keep its target alive: a weak reference read as the object.

An IKE SA owns its ``Exchanges`` and ``Fragments``, and each points back at the SA. With
strong references both ways every closed IKE SA is a reference cycle that only the cyclic
garbage collector frees, and with tens of thousands of SAs its full passes are long pauses
(issue 11; ipsecd/gcpolicy.py freezes survivors to keep them short, so a cycle waits for the
next thaw). A weak back-pointer leaves the owner as the only strong link: the SA and
everything it owns are freed by reference counting the moment the manager forgets it.

The parts never outlive their SA in practice (nothing else holds an SA's ``Exchanges``);
should one be used after all the same, reading the pointer raises instead of returning None.
"""

from __future__ import annotations

import weakref
from operator import attrgetter
from typing import Any, Generic, TypeVar, overload

T = TypeVar("T")


class BackRef(Generic[T]):
    """A class attribute ``sa: BackRef[IkeSa] = BackRef("_sa")`` over a slot ``_sa`` that holds
    a ``weakref.ref``; assigning stores the weak reference, reading returns the target."""

    __slots__ = ("_read", "slot")

    def __init__(self, slot: str) -> None:
        self.slot = slot
        self._read = attrgetter(slot)

    @overload
    def __get__(self, obj: None, owner: type) -> BackRef[T]: ...
    @overload
    def __get__(self, obj: object, owner: type) -> T: ...

    def __get__(self, obj: object | None, owner: type) -> BackRef[T] | T:
        if obj is None:
            return self
        target: T | None = self._read(obj)()
        if target is None:
            raise ReferenceError(f"{type(obj).__name__}.{self.slot}: its owner is gone")
        return target

    def __set__(self, obj: object, value: T) -> None:
        ref: Any = weakref.ref(value)
        setattr(obj, self.slot, ref)


__all__ = ["BackRef"]
