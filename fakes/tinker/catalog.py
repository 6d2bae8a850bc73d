"""The served lineup as the simulated service answers it: a 400 for a model it does not serve."""

from __future__ import annotations

from fakes.lineup import CATALOG, BaseModel, canonical_name, unserved_reason

from . import errors


def resolve(name: str) -> BaseModel:
    """The served model ``name`` (suffix variants included); a 400 ``BadRequestError`` otherwise."""
    reason = unserved_reason(name)
    if reason is not None:
        raise errors.bad_request(reason, path="models/create")
    return CATALOG[canonical_name(name)]
