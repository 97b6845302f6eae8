"""Errors a user can cause. The CLI prints their message in one line and exits non-zero."""


class UserError(Exception):
    """A mistake in input (preset, key, value, dataset, run name): told in one sentence, no traceback."""

    exit_code = 2


class NetworkUnavailable(UserError):
    """Something needed the network and could not reach it."""
