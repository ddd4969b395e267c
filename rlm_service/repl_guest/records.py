"""``record``: the dataclass behaviour the guest needs, without importing dataclasses.

Every REPL is a fresh interpreter, so its imports are paid once per run. Importing
``dataclasses`` (which pulls in ``inspect``, ``dis`` and ``tokenize``) and generating
methods for the protocol's classes cost a guest about 10 ms of CPU on the 2-core
benchmark machine, a fifth of its start-up (docs/performance.md). Type checkers see
the real ``dataclass``; at run time ``record`` builds the same ``__init__``,
``__eq__`` and ``__repr__`` from the class's annotations and defaults, without exec.

Supported: fields with or without plain defaults, ``list_field()`` for a fresh empty
list, ``frozen=True``. Enough for the control protocol; not a general replacement.
"""

from __future__ import annotations

__all__ = ["as_dict", "list_field", "record"]

TYPE_CHECKING = False
if TYPE_CHECKING:
    from dataclasses import asdict as as_dict
    from dataclasses import dataclass as record
    from dataclasses import field
    from typing import Any

    def list_field() -> Any:
        return field(default_factory=list)
else:
    _MISSING = object()
    _NEW_LIST = object()

    def list_field():
        return _NEW_LIST

    def record(cls=None, /, *, frozen=False):
        def wrap(cls):
            # inspect.get_annotations would import inspect, the cost this module avoids.
            names = tuple(cls.__dict__.get("__annotations__", {}))  # noqa: RUF063
            defaults = {n: cls.__dict__.get(n, _MISSING) for n in names}
            for n in names:  # instance attributes, not class ones, hold the values
                if n in cls.__dict__:
                    delattr(cls, n)

            def __init__(self, *args, **kwargs):
                if len(args) > len(names):
                    raise TypeError(f"{cls.__name__}() takes {len(names)} arguments")
                values = dict(zip(names, args, strict=False))
                for key, value in kwargs.items():
                    if key not in defaults or key in values:
                        raise TypeError(f"{cls.__name__}() got an unexpected or repeated "
                                        f"argument {key!r}")
                    values[key] = value
                for n in names:
                    if n not in values:
                        default = defaults[n]
                        if default is _MISSING:
                            raise TypeError(f"{cls.__name__}() missing argument {n!r}")
                        values[n] = [] if default is _NEW_LIST else default
                    object.__setattr__(self, n, values[n])

            def __eq__(self, other):
                if other.__class__ is not self.__class__:
                    return NotImplemented
                return all(getattr(self, n) == getattr(other, n) for n in names)

            def __repr__(self):
                inner = ", ".join(f"{n}={getattr(self, n)!r}" for n in names)
                return f"{cls.__name__}({inner})"

            cls.__init__ = __init__
            cls.__eq__ = __eq__
            cls.__repr__ = __repr__
            cls.__record_fields__ = names
            if frozen:
                def __setattr__(self, name, value):
                    raise AttributeError(f"cannot assign to field {name!r}")

                cls.__setattr__ = __setattr__
                cls.__delattr__ = __setattr__
                cls.__hash__ = lambda self: hash(tuple(getattr(self, n) for n in names))
            else:
                cls.__hash__ = None
            return cls

        return wrap if cls is None else wrap(cls)

    def as_dict(obj):
        """The record's fields as a dict (lists copied), like ``dataclasses.asdict``."""
        return {n: (list(v) if isinstance(v, list) else v)
                for n in obj.__record_fields__ for v in (getattr(obj, n),)}
