"""One small registry class reused by every family (datasets, models, triggers, tools).

Third-party tools register with the same decorators; a package that declares an entry point in the group
`trojanbench.tools` (its value: a module to import) is imported the first time any registry is read, so an
installed plug-in shows up on the leaderboards without being imported by hand.
"""

from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from .errors import UserError, unknown_name

T = TypeVar("T")
ENTRY_POINT_GROUP = "trojanbench.tools"
_plugins_loaded = False


def load_plugins() -> list[str]:
    """Import every `trojanbench.tools` entry point once; returns their names. A broken plug-in is a one-line error."""
    global _plugins_loaded
    if _plugins_loaded:
        return []
    _plugins_loaded = True
    from importlib.metadata import entry_points

    loaded = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()
        except Exception as e:  # noqa: BLE001 - whatever a plug-in raises, the user gets one line naming it
            raise UserError(f"plug-in {ep.name!r} ({ep.value}) failed to load: {type(e).__name__}: {e}") from None
        loaded.append(ep.name)
    return loaded


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items and self._items[name] is not obj:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        load_plugins()
        try:
            return self._items[name]
        except KeyError:
            raise unknown_name(self.kind, name, self._items) from None

    def names(self) -> list[str]:
        load_plugins()
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        load_plugins()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
