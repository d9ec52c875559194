"""Fail early, with an installable hint, when the `serve` extra is missing."""

from lmdistill.errors import UserError


class MissingServeDependencies(UserError, ImportError):
    """fastapi or uvicorn is not installed (a UserError for the CLI, an ImportError for everyone else)."""


try:
    import fastapi  # noqa: F401
    import uvicorn  # noqa: F401
except ImportError as _exc:
    raise MissingServeDependencies(
        f"`lmdistill serve` needs fastapi and uvicorn ({_exc.name} is missing): pip install 'lmdistill[serve]'"
    ) from _exc
