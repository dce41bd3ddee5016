"""The error a user can cause, in a module that imports nothing, so that the first checks of a
run (a busy workdir, `alignjax.workdir`) can refuse before the seconds of importing jax.

`alignjax.validation` re-exports it; every one-line refusal in alignjax is one of these.
"""


class ValidationError(ValueError):
    """A config, dataset or starting point is unusable; the message says which and why."""
