"""Topics, retries, truth values and environments: small tools the rest of the package shares.

A *topic* names a Python object as ``"package.module:Qual.Name"``. Topics are how stored
events name their classes, so they must keep resolving after code is renamed or moved:
:func:`register_topic` maps an old name (of a class, a module or a package) to its new home.
"""

from __future__ import annotations

import contextlib
import importlib
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import wraps
from types import ModuleType
from typing import Any, TypeVar, overload

__all__ = [
    "EnvType",
    "Environment",
    "TopicError",
    "clear_topic_cache",
    "construct_topic",
    "get_method_name",
    "get_topic",
    "redact_url",
    "register_topic",
    "resolve_topic",
    "retry",
    "reversed_keys",
    "strtobool",
]

EnvType = Mapping[str, str]
T = TypeVar("T")
TCallable = TypeVar("TCallable", bound=Callable[..., Any])


class TopicError(Exception):
    """Raised when a topic cannot be resolved, or is registered for two objects."""


_topic_cache: dict[str, Any] = {}  # topic -> object (registered or resolved)
_object_topics: dict[Any, str] = {}  # object -> topic (memo for get_topic)
_topic_lock = threading.Lock()


def construct_topic(obj: Any, /) -> str:
    """Return the topic of a class, function or module, without caching."""
    if isinstance(obj, ModuleType):
        return obj.__name__
    explicit = getattr(obj, "TOPIC", None)
    if isinstance(explicit, str):
        return explicit
    return f"{obj.__module__}:{obj.__qualname__}"


def get_topic(obj: Any, /) -> str:
    """Return the topic of a class, function or module, and register it for resolution."""
    try:
        return _object_topics[obj]
    except (KeyError, TypeError):
        pass
    topic = construct_topic(obj)
    register_topic(topic, obj)
    with contextlib.suppress(TypeError):  # unhashable objects are not memoised
        _object_topics[obj] = topic
    return topic


def register_topic(topic: str, obj: Any) -> None:
    """Make ``topic`` resolve to ``obj``: for renamed or moved classes, modules and packages.

    Registering the same object twice is harmless; registering a different object under a
    topic that is already taken raises :class:`TopicError`.
    """
    with _topic_lock:
        existing = _topic_cache.get(topic, obj)
        if existing is not obj and existing != obj:
            raise TopicError(
                f"Object {existing} is already registered for topic '{topic}', "
                f"so refusing to register {obj}"
            )
        _topic_cache[topic] = obj


def resolve_topic(topic: str) -> Any:
    """Return the object that ``topic`` names (the inverse of :func:`get_topic`)."""
    try:
        return _topic_cache[topic]
    except KeyError:
        pass
    module_name, _, attr_path = topic.partition(":")
    try:
        obj = _resolve_registered_prefix(module_name, attr_path)
        if obj is None:
            obj = _import_and_getattr(module_name, attr_path)
    except (ImportError, AttributeError) as e:
        raise TopicError(f"Failed to resolve topic '{topic}': {e}") from e
    register_topic(topic, obj)
    return obj


def _resolve_registered_prefix(module_name: str, attr_path: str) -> Any:
    """Resolve through a registered renamed class or moved module or package, if any."""
    if attr_path:
        parts = attr_path.split(".")
        for i in range(len(parts) - 1, 0, -1):
            base = _topic_cache.get(f"{module_name}:{'.'.join(parts[:i])}")
            if base is not None:
                return _getattr_path(base, parts[i:])
    names = module_name.split(".")
    for i in range(len(names), 0, -1):
        base = _topic_cache.get(".".join(names[:i]))
        if isinstance(base, ModuleType):
            module_path = ".".join([base.__name__, *names[i:]])
            module = importlib.import_module(module_path)
            return _getattr_path(module, attr_path.split(".")) if attr_path else module
    return None


def _import_and_getattr(module_name: str, attr_path: str) -> Any:
    module = importlib.import_module(module_name)
    return _getattr_path(module, attr_path.split(".")) if attr_path else module


def _getattr_path(obj: Any, names: Sequence[str]) -> Any:
    for name in names:
        obj = getattr(obj, name)
    return obj


def clear_topic_cache() -> None:
    """Forget every registered and resolved topic (tests call this between cases)."""
    with _topic_lock:
        _topic_cache.clear()
        _object_topics.clear()


@overload
def retry(exc: TCallable, /) -> TCallable: ...


@overload
def retry(
    exc: type[BaseException] | Sequence[type[BaseException]] = ...,
    max_attempts: int = ...,
    wait: float = ...,
    stall: float = ...,
) -> Callable[[TCallable], TCallable]: ...


def retry(
    exc: Any = Exception,
    max_attempts: int = 1,
    wait: float = 0,
    stall: float = 0,
) -> Any:
    """Decorate a function so that it is called again when it raises one of ``exc``.

    ``max_attempts`` counts calls in total; ``wait`` seconds (with 5% jitter) pass between
    calls; ``stall`` seconds pass once before the first call. Used bare (``@retry``), it
    retries nothing: one attempt, on ``Exception``.
    """
    if callable(exc) and not isinstance(exc, type):  # used bare: @retry
        return retry()(exc)
    if isinstance(exc, type) and issubclass(exc, BaseException):
        exceptions: tuple[type[BaseException], ...] = (exc,)
    elif isinstance(exc, list | tuple):
        for e in exc:
            if not (isinstance(e, type) and issubclass(e, BaseException)):
                raise TypeError(f"not an exception class: {e}")
        exceptions = tuple(exc)
    else:
        raise TypeError(f"not an exception class: {exc}")
    if not isinstance(max_attempts, int):
        raise TypeError(f"'max_attempts' must be an int: {max_attempts!r}")
    if not isinstance(wait, int | float):
        raise TypeError(f"'wait' must be an int or float: {wait!r}")
    if not isinstance(stall, int | float):
        raise TypeError(f"'stall' must be an int or float: {stall!r}")

    def decorator(func: TCallable) -> TCallable:
        @wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if stall:
                time.sleep(stall)
            attempts = 0
            while True:
                try:
                    return func(*args, **kwargs)
                except exceptions:
                    attempts += 1
                    if attempts >= max_attempts:
                        raise
                    if wait:
                        time.sleep(wait * random.uniform(0.95, 1.05))

        return wrapper  # type: ignore[return-value]

    return decorator


_TRUE = frozenset({"y", "yes", "t", "true", "on", "1"})
_FALSE = frozenset({"n", "no", "f", "false", "off", "0"})


def strtobool(val: str) -> bool:
    """Convert a truth value such as ``"yes"`` or ``"0"`` to a bool (case-insensitive).

    The one set of truth values of every setting: ``y``, ``yes``, ``t``, ``true``, ``on``
    and ``1`` are true, ``n``, ``no``, ``f``, ``false``, ``off`` and ``0`` false, anything
    else a ValueError.
    """
    if not isinstance(val, str):
        raise TypeError(f"{val} is not a str")
    lowered = val.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(f"invalid truth value {lowered!r}")


def redact_url(url: str) -> str:
    """``url`` without its credentials, for messages and log lines.

    ``redis://user:secret@host:6379/0`` becomes ``redis://host:6379/0``; a value without
    ``://`` (such as ``postgres``) is returned as it is.
    """
    scheme, sep, rest = url.partition("://")
    return f"{scheme}{sep}{rest.rpartition('@')[2]}" if sep else url


def reversed_keys(d: Mapping[Any, Any]) -> Iterator[Any]:
    """Iterate over the keys of ``d`` in reverse insertion order."""
    return iter(reversed(list(d.keys())))


def get_method_name(method: Callable[..., Any]) -> str:
    """Return the qualified name of a function or method."""
    return method.__qualname__


class Environment(dict[str, str]):
    """Settings for one named application: ``NAME_KEY`` wins over ``KEY`` in :meth:`get`."""

    def __init__(self, name: str = "", env: EnvType | None = None):
        super().__init__(env or {})
        self.name = name

    @overload  # type: ignore[override]
    def get(self, key: str) -> str | None: ...

    @overload
    def get(self, key: str, default: str | T) -> str | T: ...

    def get(self, key: str, default: str | T | None = None) -> str | T | None:
        """Return the first value found for ``NAME_KEY`` then ``KEY``, else ``default``."""
        for k in self.create_keys(key):
            value = super().get(k)
            if value is not None:
                return value
        return default

    def create_keys(self, key: str) -> list[str]:
        """Return the keys :meth:`get` looks up, most specific first."""
        keys = []
        if self.name:
            keys.append(self.name.upper() + "_" + key)
        keys.append(key)
        return keys
