"""Roles and what each may do: the one vocabulary of access for the server's API, the dashboard and the
admin commands.

A role is a set of permissions, and whatever guards an action asks for a permission, never for a role
name: ``serve/auth.py`` derives its route -> roles table from ``roles_with(permission)``, so the table
below is the only place that says who may do what.

=========  ======================================================================================
role       may
=========  ======================================================================================
inference  list and describe the served models, ask for chat and text completions, rate the answers
           its own key received (``POST /v1/feedback``). What an application needs, nothing more.
viewer     read-only monitoring: the served models, ``/metrics``, A/B tests and their results, the
           loaded adapters, and in the dashboard runs, datasets, models and review results. No
           completions and no feedback: a credential left in a dashboard or a scraper spends no
           compute, reads no served output, and cannot skew an A/B test's feedback.
trainer    everything inference and viewer may, and change what is made and served: start runs, promote
           model versions (through the gate), load and unload adapters, start and end A/B tests, review
           answers blind. It is the role of whoever ships models, but it cannot touch keys.
admin      everything, keys included (``/v1/admin/keys``). Managing keys is admin-only because a
           key-maker can mint a key of any role, so it is admin in all but name.
=========  ======================================================================================

``user``, the name of ``inference`` before there were four roles, is still accepted when a key is
created (and stored as ``inference``); the registry's migration 0004 renamed the existing ``user`` keys.
A role that is not in this table (a name from a newer release, a typo in the database) has no
permissions: such a key is refused everywhere rather than guessed at.
"""

from __future__ import annotations

from tunelab.errors import TunelabError

# permissions
READ_MODELS = "models:read"  # GET /v1/models, /v1/models/{name}
GENERATE = "generate"  # chat and text completions
FEEDBACK = "feedback"  # rate answers this key received
MONITOR = "monitor"  # /metrics, A/B tests and reports, loaded adapters
MANAGE_ADAPTERS = "adapters:write"  # load and unload adapters
MANAGE_AB = "ab:write"  # start and end A/B tests
MANAGE_KEYS = "keys"  # list, create and revoke API keys
READ_RUNS = "runs:read"  # the dashboard: runs, curves, predictions, datasets, models, review results
START_RUNS = "runs:start"  # start a training run (the dashboard's New-run form)
PROMOTE = "models:promote"  # move an alias through the promotion gate
REVIEW = "review"  # blind review: judge pairs of answers (stored as preference pairs)

ADMIN, TRAINER, VIEWER, INFERENCE = "admin", "trainer", "viewer", "inference"
ROLES = (ADMIN, TRAINER, VIEWER, INFERENCE)  # most powerful first
DEFAULT_ROLE = INFERENCE
ALIASES = {"user": INFERENCE}  # old name -> role

_INFERENCE = frozenset({READ_MODELS, GENERATE, FEEDBACK})
_VIEWER = frozenset({READ_MODELS, MONITOR, READ_RUNS})
_TRAINER = _INFERENCE | _VIEWER | {MANAGE_ADAPTERS, MANAGE_AB, START_RUNS, PROMOTE, REVIEW}
PERMISSIONS: dict[str, frozenset[str]] = {
    INFERENCE: _INFERENCE,
    VIEWER: _VIEWER,
    TRAINER: _TRAINER,
    ADMIN: _TRAINER | {MANAGE_KEYS},
}
DESCRIPTIONS = {
    ADMIN: "everything, API keys included",
    TRAINER: "inference and viewer, plus runs, promotion, review, adapters and A/B tests",
    VIEWER: "read-only: models, metrics, adapters, A/B results, the dashboard; no completions",
    INFERENCE: "calls models (completions) and rates its own answers",
}


def role_named(name: str) -> str:
    """``name`` as a role (an old alias becomes its new name); a one-line error naming the roles otherwise."""
    role = ALIASES.get(name, name)
    if role not in PERMISSIONS:
        raise TunelabError(f"role {name!r}: use one of {', '.join(ROLES)}")
    return role


def allows(role: str, permission: str) -> bool:
    """Whether ``role`` has ``permission``; an unknown role has none."""
    return permission in PERMISSIONS.get(ALIASES.get(role, role), frozenset())


def roles_with(permission: str) -> frozenset[str]:
    """Every role that has ``permission``."""
    return frozenset(role for role, granted in PERMISSIONS.items() if permission in granted)
