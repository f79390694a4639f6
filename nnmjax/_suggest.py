"""``did you mean`` hints for misspelled names (config keys, rules, attacks).

    >>> did_you_mean("optimal_ali", ["alie", "optimal_alie", "foe"])
    " (did you mean 'optimal_alie'?)"
    >>> did_you_mean("xyz", ["alie"])
    ''
"""
from __future__ import annotations

import difflib
from typing import Iterable

__all__ = ["did_you_mean"]


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """``" (did you mean 'x'?)"`` (or ``'x' or 'y'``) for the closest ``choices`` to ``word``
    (:func:`difflib.get_close_matches`, cutoff 0.6), ``""`` when none is close."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=2, cutoff=0.6)
    return " (did you mean " + " or ".join(repr(c) for c in close) + "?)" if close else ""
