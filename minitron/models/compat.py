"""Differences between transformers releases that minitron's calls must follow.

transformers 5.2x renamed the cache argument of model, layer and mask functions from
`past_key_values` to `cache` (the old name warns, and is removed in 5.40); model outputs carry
the cache as `.cache`. Calls name whichever the installed version takes, so nothing warns now and
nothing breaks on the next minor release.
"""

from __future__ import annotations

import functools
import inspect


@functools.cache
def _cache_kwarg(fn) -> str:
    try:
        params = inspect.signature(fn).parameters  # follows functools.wraps of the deprecation wrapper
    except (TypeError, ValueError):  # pragma: no cover
        return "cache"
    return "past_key_values" if "past_key_values" in params and "cache" not in params else "cache"


def cache_kwargs(fn, cache) -> dict:
    """`{name: cache}` with the argument name `fn` takes for the cache."""
    target = getattr(fn, "forward", fn)
    target = getattr(target, "__func__", target)
    return {_cache_kwarg(target): cache}


def output_cache(out):
    """The cache a model returned (`.cache`, or `.past_key_values` before the rename)."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else getattr(out, "past_key_values", None)
