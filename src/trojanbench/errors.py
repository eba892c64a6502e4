"""Errors a user can cause. The CLI prints their message on one line and exits 2."""


class UserError(Exception):
    """A mistake in the user's input (path, config, model file, name) with a message that says what to do."""


def first_error(e: Exception) -> str:
    """One line for an exception: a pydantic error's first field that does not fit ("loc: msg"), else the first
    line of its message (its type when it has none)."""
    errors = getattr(e, "errors", None)
    if callable(errors):
        err = errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        return f"{loc}: {err['msg']}" if loc else err["msg"]
    return (str(e).splitlines() or [type(e).__name__])[0]


def unknown_name(kind: str, name: str, known) -> UserError:
    return UserError(f"unknown {kind} {name!r}; known: {', '.join(sorted(known))}")


class DataWarning(UserWarning):
    """Input data that was accepted after a change the user should know of (e.g. 8-bit pixel values rescaled to
    [0, 1]). Its message is one line; the CLI prints it as `warning: <message>`."""


def script_main(main) -> None:
    """Run a script's `main()` the way the CLI runs a command: a UserError (no zoo at the path, a damaged file, a
    bad name) is one line on stderr, `error: <message>`, and exit status 2 instead of a traceback."""
    import sys

    try:
        main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
