"""The PEER scenario's Celery side: the app, its no-op task, and the producer.

Rules of this module (Celery is the ``peer`` extra: ``pip install 'schedd[peer]'``):

* The broker and the result backend are the one Redis of ``PEER_REDIS_URL`` (db 0), as the
  other systems of the scenario share it. Importing this module builds the app (``celery -A
  schedd.devtools.peer_celery worker`` finds it as ``app``); it needs Celery installed.
* The task ``peer.noop`` returns its argument, so that each result names its job.
* The worker prints ``ready`` on stdout when Celery says it is ready (``worker_ready``).
* ``python -m schedd.devtools.peer_celery producer SERIAL WARMUP BURST TIMEOUT`` follows the
  drivers' contract of :mod:`schedd.devtools.peer_drivers`: serial jobs with ``.get()``, then
  after a line on stdin a burst of ``BURST`` jobs as one ``group(...).apply_async()``, its
  results read with ``GroupResult.get`` (Redis's native join), ``TIMEOUT`` seconds at most.
"""

from __future__ import annotations

import importlib
import os
import sys
import time
from typing import Any, Final

from schedd.devtools.peer_drivers import burst_report, emit

#: Celery imported by name: it is an optional extra without type information
celery: Any = importlib.import_module("celery")

QUEUE: Final = "peer"
URL: Final = os.environ.get("PEER_REDIS_URL", "redis://127.0.0.1:6379/0")

app = celery.Celery("peer", broker=URL, backend=URL)
app.conf.update(
    task_default_queue=QUEUE,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    worker_redirect_stdouts=False,
)


def noop(index: int) -> int:
    return index


task = app.task(name="peer.noop")(noop)


def _ready(**_: Any) -> None:
    os.write(1, b"ready\n")


celery.signals.worker_ready.connect(_ready, weak=False)


def produce(serial: int, warmup: int, burst: int, timeout: float) -> None:
    seconds: list[float] = []
    for index in range(warmup + serial):
        started = time.perf_counter()
        task.delay(index).get(timeout=timeout)
        if index >= warmup:
            seconds.append(time.perf_counter() - started)
    emit({"serial_s": seconds})
    sys.stdin.readline()
    started = time.perf_counter()
    group = celery.group(task.s(index) for index in range(burst)).apply_async()
    ids = [str(index) for index in range(burst)]
    try:
        received = [str(value) for value in group.get(timeout=timeout)]
    except celery.exceptions.TimeoutError:
        received = [str(r.result) for r in group.results if r.ready()]
    elapsed = time.perf_counter() - started
    emit(burst_report(elapsed, ids, received))


def main(argv: list[str]) -> None:
    """``producer SERIAL WARMUP BURST TIMEOUT``."""
    role, *rest = argv
    if role != "producer":
        raise SystemExit(f"unknown role {role!r}: producer (the worker is `celery -A ...`)")
    serial, warmup, burst = (int(value) for value in rest[:3])
    produce(serial, warmup, burst, float(rest[3]))


if __name__ == "__main__":
    main(sys.argv[1:])
