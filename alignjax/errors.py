"""The error a user can cause, in a module that imports nothing, so that the first checks of a
run (a busy workdir, `alignjax.workdir`) can refuse before the seconds of importing jax.

`alignjax.validation` re-exports it; every one-line refusal in alignjax is one of these.
"""


class ValidationError(ValueError):
    """A config, dataset or starting point is unusable; the message says which and why."""


class DataError(ValidationError):
    """A dataset, record or data spec is malformed; the message says where (file, line or row)."""


def require(module: str, what: str, extra: str, package: str = ''):
    """The optional module `module`, or a ValidationError naming the extra that brings it."""
    import importlib  # pylint: disable=g-import-not-at-top
    try:
        return importlib.import_module(module)
    except ImportError:
        package = package or module
        raise ValidationError(f"{what} needs the '{package}' package, which alignjax's [{extra}] "
                              f"extra brings: pip install 'alignjax[{extra}]' (or pip install "
                              f"{package})") from None
