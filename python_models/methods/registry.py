"""The method registry: ``METHODS`` maps a key to its class, ``create`` builds one."""

from __future__ import annotations

from typing import Any, TypeVar

from python_models.methods.base import Method

__all__ = ["METHODS", "create", "register"]

METHODS: dict[str, type[Method]] = {}

_M = TypeVar("_M", bound=type[Method])


def register(cls: _M) -> _M:
    """Class decorator: add a method under its ``KEY``."""
    if not cls.KEY:
        raise ValueError(f"{cls.__name__} has no KEY")
    if cls.KEY in METHODS and METHODS[cls.KEY] is not cls:
        raise ValueError(f"method key {cls.KEY!r} is taken by {METHODS[cls.KEY].__name__}")
    METHODS[cls.KEY] = cls
    return cls


def create(name: str, **overrides: Any) -> Method:
    """The method registered as ``name``, with its published defaults and ``overrides``.

    >>> import python_models
    >>> model = python_models.create("cam", backbone="tiny", num_classes=4)
    >>> model.config.cam_scales, model.KERNELS
    ((1.0, 0.5, 1.5, 2.0), ('dense_crf',))
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a method key (str), got {type(name).__name__}")
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; registered: {sorted(METHODS)}")
    return METHODS[name](**overrides)
