"""The one hook layer: every tool, track and study that captures or patches activations goes through `hooked`.

A hook is torch's forward hook, `hook(module, inputs, output)`: it may record `output` (capture) or return a
replacement for it (patch). `hooked` registers hooks for the duration of a `with` block and removes every one of
them when the block ends, however it ends: an exception in the middle of a forward pass (a tripwire test runs
every registered tool that way, tests/tools/test_side_effects.py) leaves no hook on the caller's model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager

from torch import nn

Hook = Callable[[nn.Module, tuple, object], object]


@contextmanager
def hooked(modules: nn.Module | Iterable[nn.Module] | Mapping[nn.Module, Hook], hook: Hook | None = None) -> Iterator[None]:
    """Forward hooks while the block runs: `hook` on one module or on each of several, or a {module: hook} mapping
    (then no `hook`). Always removed when the block ends."""
    if isinstance(modules, Mapping):
        if hook is not None:
            raise TypeError("pass either a {module: hook} mapping or modules and one hook")
        pairs = list(modules.items())
    else:
        pairs = [(m, hook) for m in ([modules] if isinstance(modules, nn.Module) else modules)]
    handles = []
    try:
        for module, fn in pairs:
            handles.append(module.register_forward_hook(fn))
        yield
    finally:
        for handle in handles:
            handle.remove()
