"""``schedd bench``: the daemon's speed, measured end to end (docs/benchmarks.md has the numbers).

Rules of this package (:mod:`.measure` what every scenario shares, :mod:`.daemon` the daemon
under test, :mod:`.clients` the clients and the record of every job, :mod:`.scenarios` the
scenarios, :mod:`.runner` the run, its table and JSON document):

* Real parts only: a throw-away ``redis-server`` on a free port, the daemon as a ``schedd run``
  subprocess (ready when it says ``READY=1`` on its ``NOTIFY_SOCKET``), simulated nodes
  (:mod:`schedd.devtools.sim`) and lean clients speaking the wire protocol over the real
  transports. Each scenario gets a fresh Redis and daemon, so no scenario measures another's
  leftovers.
* One clock: nodes and clients live in this process, so every latency is a difference of
  ``time.perf_counter()`` stamps taken here (submit sent, ``assign`` received, ``done``
  received). The daemon's own timings are not used.
* Every scenario counts its jobs: a job submitted and accepted must reach exactly one ``done``;
  ``lost`` is the number that did not within the drain timeout (the smoke test asserts 0).
* Timings are reported, never asserted.

Scenarios: S1 dispatch latency (open loop), S2 throughput (closed loop, concurrency raised until
p99 passes 50 ms), S3 heartbeat scale (daemon CPU, RSS, heartbeat script calls per second,
dispatch p99 under that load), S4 script cost (:mod:`schedd.devtools.script_cost`), S5
failover (S1's load with jobs that take time, nodes dropped or silenced while they run: time
to reassignment, jobs lost), SLOWLORIS (a probe client's latency, quiet and while connections
that never finish their handshake hold the listener: :mod:`schedd.devtools.slowloris`); when
named, SOAK (the daemon's memory under reconnections and jobs: :mod:`schedd.devtools.soak`) and
BROWSE (the Redis time of one page of a job listing at 1,000 and 1,000,000 retained jobs:
:mod:`schedd.devtools.browse_cost`), SDK (:mod:`schedd.devtools.sdk_bench`), PIPE (a
three-stage pipeline against one job and the client's chain: :mod:`schedd.devtools.pipe_bench`),
ORDER (:mod:`schedd.devtools.order_bench`), BLOB (:mod:`schedd.devtools.blob_bench`) and FAIR
(weighted fair share between principals, simulated through the scripts, and a fair dispatch's
Redis time with 1 to 1,000 principals queued: :mod:`schedd.devtools.fair_bench`) and RETAIN
(the Redis memory of finished jobs along a compressed hour at the default retention:
:mod:`schedd.devtools.retention_cost`) and PEER (the same no-op jobs through schedd, BullMQ and
Celery on one redis-server: :mod:`schedd.devtools.peer_bench`).

Before the scenarios, with nothing of the bench running, :mod:`schedd.devtools.host_probe`
looks for moments the host stops this machine's CPUs (``machine.host_stalls``): such stalls put
a floor under every latency tail measured here. It runs again after the scenarios
(``machine.host_stalls_after``): a longer usual slice then than before means the host still
runs slower at the end of the run (a slowdown that has passed by then does not show).
"""

from __future__ import annotations

from schedd.devtools.bench.clients import (
    BenchClient,
    JobRecord,
    Recorder,
    open_clients,
    open_fleet,
    open_loop,
)
from schedd.devtools.bench.daemon import DaemonProcess, Setting, parse_setting, running_daemon
from schedd.devtools.bench.measure import (
    SCENARIOS,
    machine,
    percentiles,
    probe_host,
    probing,
)
from schedd.devtools.bench.options import Options
from schedd.devtools.bench.runner import (
    _failure,
    default_json_path,
    run_bench,
    table,
    write_json,
)
from schedd.devtools.bench.scenarios import SCALES, held_jobs_after_kills

__all__ = [
    "SCALES",
    "SCENARIOS",
    "BenchClient",
    "DaemonProcess",
    "JobRecord",
    "Options",
    "Recorder",
    "Setting",
    "_failure",
    "default_json_path",
    "held_jobs_after_kills",
    "machine",
    "open_clients",
    "open_fleet",
    "open_loop",
    "parse_setting",
    "percentiles",
    "probe_host",
    "probing",
    "run_bench",
    "running_daemon",
    "table",
    "write_json",
]
