"""Errors a user can cause. The CLI prints their message on one line and exits 2."""


class UserError(Exception):
    """A mistake in the user's input (path, config, model file, name) with a message that says what to do."""


def unknown_name(kind: str, name: str, known) -> UserError:
    return UserError(f"unknown {kind} {name!r}; known: {', '.join(sorted(known))}")


class DataWarning(UserWarning):
    """Input data that was accepted after a change the user should know of (e.g. 8-bit pixel values rescaled to
    [0, 1]). Its message is one line; the CLI prints it as `warning: <message>`."""
