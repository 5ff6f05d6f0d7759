"""Tests for eventsourcing.dispatch.singledispatchmethod (API.md section 2).

This module uses ``from __future__ import annotations`` on purpose: annotations are strings,
so a handler annotated with a class defined further down cannot be registered at once.
"""

from __future__ import annotations

import functools
import threading
from typing import get_origin

import pytest

from eventsourcing.dispatch import singledispatchmethod


class Animal:
    """Base of the classes dispatched on."""


class Dog(Animal):
    """Defined before the policy."""


class Policy:
    """Dispatches on classes defined before and after it."""

    @singledispatchmethod
    def handle(self, obj: object) -> str:
        return "default"

    @handle.register
    def _(self, obj: Dog) -> str:
        return "dog"

    @handle.register
    def _(self, obj: Cat) -> str:  # Cat is defined below: registration is deferred.
        return "cat"

    @handle.register(int)
    def _(self, obj: int) -> str:
        return "int"

    def _handle_bytes(self, obj: bytes) -> str:
        return "bytes"

    handle.register(bytes, _handle_bytes)

    @handle.register
    def _(self, obj: float | complex) -> str:
        return "number"


class Cat(Animal):
    """Defined after the policy that names it."""


class Kitten(Cat):
    """Dispatches like its base class."""


def test_is_a_functools_singledispatchmethod() -> None:
    assert issubclass(singledispatchmethod, functools.singledispatchmethod)


def test_default_implementation() -> None:
    assert Policy().handle("text") == "default"
    assert Policy().handle(Animal()) == "default"


def test_annotation_registration() -> None:
    assert Policy().handle(Dog()) == "dog"


def test_deferred_registration_for_class_defined_later() -> None:
    assert Policy().handle(Cat()) == "cat"
    assert Policy().handle(Kitten()) == "cat"


def test_register_with_class_argument() -> None:
    assert Policy().handle(1) == "int"


def test_register_with_class_and_method() -> None:
    assert Policy().handle(b"x") == "bytes"


def test_register_union_annotation() -> None:
    assert Policy().handle(1.5) == "number"
    assert Policy().handle(1j) == "number"


def test_deferred_registration_returns_the_function() -> None:
    class Later:
        @singledispatchmethod
        def handle(self, obj: object) -> str:
            return "default"

        def handler(self, obj: NeverDefined) -> str:  # type: ignore[name-defined]  # noqa: F821
            return "never"

        registered = handle.register(handler)

    assert Later.registered is Later.handler


def test_unresolvable_annotation_raises_on_each_use() -> None:
    class Broken:
        @singledispatchmethod
        def handle(self, obj: object) -> str:
            return "default"

        @handle.register
        def _(self, obj: NeverDefined) -> str:  # type: ignore[name-defined]  # noqa: F821
            return "never"

    # The handler stays deferred, so each lookup tries (and fails) again.
    with pytest.raises(NameError):
        Broken().handle(1)
    with pytest.raises(NameError):
        Broken().handle(1)


def test_deferred_handler_registers_once_its_class_exists() -> None:
    class Late:
        @singledispatchmethod
        def handle(self, obj: object) -> str:
            return "default"

        @handle.register
        def _(self, obj: LateClass) -> str:  # type: ignore[name-defined]  # noqa: F821
            return "late"

    # The annotation is evaluated in the function's module globals.
    late_class = type("LateClass", (), {})
    with pytest.raises(NameError):
        Late().handle(late_class())
    globals()["LateClass"] = late_class
    try:
        assert Late().handle(late_class()) == "late"
        assert Late().handle(1) == "default"
    finally:
        del globals()["LateClass"]


def test_invalid_registration_argument_still_raises() -> None:
    with pytest.raises(TypeError):

        class Bad:
            @singledispatchmethod
            def handle(self, obj: object) -> str:
                return "default"

            handle.register(1)  # type: ignore[call-overload]


def test_is_generic() -> None:
    assert get_origin(singledispatchmethod[str]) is singledispatchmethod


def test_concurrent_first_use_registers_deferred_handlers_once() -> None:
    results: list[str] = []
    errors: list[BaseException] = []

    class Racy:
        @singledispatchmethod
        def handle(self, obj: object) -> str:
            return "default"

        @handle.register
        def _(self, obj: Cat) -> str:
            return "cat"

    barrier = threading.Barrier(8)

    def use() -> None:
        barrier.wait()
        try:
            results.append(Racy().handle(Cat()))
        except BaseException as e:  # pragma: no cover - only on failure
            errors.append(e)

    threads = [threading.Thread(target=use) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert results == ["cat"] * 8


def test_staticmethod_and_classmethod_defaults_work() -> None:
    class WithClassMethod:
        @singledispatchmethod
        @classmethod
        def handle(cls, obj: object) -> str:
            return f"default {cls.__name__}"

        @handle.register
        @classmethod
        def _(cls, obj: Dog) -> str:
            return f"dog {cls.__name__}"

    assert WithClassMethod.handle(1) == "default WithClassMethod"
    assert WithClassMethod.handle(Dog()) == "dog WithClassMethod"
