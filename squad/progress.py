"""Progress bars for work that takes more than a few seconds: tqdm on stderr, shown only when stderr
is a terminal (a pipe or a log file gets none), and never when the caller turned them off."""
from __future__ import annotations


def terminal_bar(iterable=None, *, enabled: bool = True, **kwargs):
    from tqdm import tqdm

    return tqdm(iterable, disable=None if enabled else True, **kwargs)
