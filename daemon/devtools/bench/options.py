"""The options of one ``schedd bench`` run, as every scenario receives them."""

from __future__ import annotations

import attrs

from schedd.devtools.bench.daemon import Setting
from schedd.devtools.bench.measure import Say, _say

__all__ = ["Options"]


@attrs.define
class Options:
    scale: str = "tiny"
    transport: str = "ws"
    url: str | None = None
    #: settings of the daemons the bench starts (S1, S2, S3, S5): ``--set``
    settings: tuple[Setting, ...] = ()
    #: run the host probe beside every scenario (``--probe-during``)
    probe_during: bool = False
    say: Say = _say
