"""Start-up costs the harness keeps out of its driver and Ray's processes.

Every process of a local Ray node imports jsonschema: the driver, Ray's six
service processes and each trial process. Ray validates runtime_env schemas
with it. When rfc3987-syntax is installed, jsonschema imports it to register
the "iri" format checks, and that import compiles 38 lark grammars: 1.5 s of
CPU per process. JupyterLab pulls the package in, through jupyter-events. On
two cores this made Ray's start take 8.8 s instead of 3.9 s, and each trial
process's start 1.4 s longer. No process of a study checks IRI formats, and
jsonschema checks formats only when asked. So these processes import a stub
that fails instead, and jsonschema goes on without the two checks.

Ray also starts one idle worker per CPU for the driver's tasks, while the
node is still starting. A study runs no tasks: its trials are actors, which
get processes of their own. So the node starts none.

Processes outside the study are not affected: the environment is changed
only while Ray starts its node.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from study.internals import NO_PRESTART

SKIPPED = "rfc3987_syntax"
STUBS = Path(__file__).with_name("stubs")  # holds only the stub that fails


def skip_here() -> None:
    """This process imports jsonschema without the package (the CLI's driver;
    a `None` in sys.modules makes its import fail)."""
    sys.modules.setdefault(SKIPPED, None)


def lean_changes(env: Mapping[str, str]) -> dict[str, str]:
    """The variables that processes of a Ray node started from env get: the
    stub first on their path, and no idle workers (for `ray start` too: the
    tests' nodes use it)."""
    path = os.pathsep.join(filter(None, [str(STUBS), env.get("PYTHONPATH")]))
    return {"PYTHONPATH": path, NO_PRESTART[0]: env.get(*NO_PRESTART)}


@contextmanager
def lean_children() -> Iterator[None]:
    """Processes started inside the block (Ray's services, and through its
    raylet every worker) get `lean_changes`."""
    changes = lean_changes(os.environ)
    old = {k: os.environ.get(k) for k in changes}
    os.environ.update(changes)
    try:
        yield
    finally:
        for key, value in old.items():
            if value is None:
                del os.environ[key]
            else:
                os.environ[key] = value
