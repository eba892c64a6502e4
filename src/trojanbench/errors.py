"""Errors a user can cause. The CLI prints their message on one line and exits 2."""


class UserError(Exception):
    """A mistake in the user's input (path, config, model file, name) with a message that says what to do."""


def unknown_name(kind: str, name: str, known) -> UserError:
    return UserError(f"unknown {kind} {name!r}; known: {', '.join(sorted(known))}")
