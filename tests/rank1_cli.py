"""``python -m tests.rank1_cli ARGS``: the ``fassl`` command, with rank 1 of a torchrun
run made different as ``FASSL_TEST_RANK1`` says (tests/cli/test_reliability_runs.py):

- ``override:<key>=<value>``: rank 1 alone is given one more override;
- ``other-image``: rank 1 reads one pre-training image with other pixels, as a node whose
  copy of the data folder differs would;
- ``kill``: rank 1 kills itself with SIGKILL in the middle of its third epoch.

Rank 0 and a run without the variable are the plain command.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

MODE = os.environ.get("FASSL_TEST_RANK1", "")
KILL_AT = 25  # gathers of the features: two a step, five steps an epoch on the demo


def _other_image() -> None:
    from fassl.runs import stage

    build = stage.build_data

    def build_other(*args: Any, **kwargs: Any) -> Any:
        data = build(*args, **kwargs)
        data.pretrain.images[0] = 255 - data.pretrain.images[0]
        return data

    stage.build_data = build_other


def _killed_mid_epoch() -> None:
    from fassl import distributed

    gather = distributed.gather_with_grad
    calls = [0]

    def gather_then_die(x: Any) -> Any:
        calls[0] += 1
        if calls[0] == KILL_AT:
            os.kill(os.getpid(), signal.SIGKILL)
        return gather(x)

    distributed.gather_with_grad = gather_then_die


if __name__ == "__main__":
    if os.environ.get("LOCAL_RANK") == "1":
        if MODE.startswith("override:"):
            sys.argv.append(MODE.removeprefix("override:"))
        elif MODE == "other-image":
            _other_image()
        elif MODE == "kill":
            _killed_mid_epoch()
    from fassl.cli import main

    sys.exit(main())
