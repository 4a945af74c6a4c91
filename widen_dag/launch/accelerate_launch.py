"""``python -m widen_dag.launch.accelerate_launch <accelerate launch arguments>``: accelerate's
own launcher, except that ``--config_file NAME`` may name a config shipped in this package
(``widen_dag/launch/accelerate/NAME.yaml``: ddp, fsdp, deepspeed_zero3). The name is resolved
here, in the process that trains, so a worker's command (a pod's, above all) holds no path of
the machine that built it. A value with a path separator or a ``.yaml`` suffix is passed on as
a file of the user's own.
"""

from __future__ import annotations

import os
import sys


def resolve_config_file(argv: list[str]) -> list[str]:
    """``argv`` with a shipped config's name after ``--config_file`` replaced by its installed path
    (only among the launcher's own flags: those after ``-m`` / the script belong to the worker)."""
    from widen_dag.launch.scaleout import accelerate_config_file

    out = list(argv)
    own = out.index("-m") if "-m" in out else len(out)  # workers always start as `-m widen_dag.workers.<stage>`
    if "--config_file" in out[:own]:
        i = out.index("--config_file") + 1
        if i < own and os.sep not in out[i] and not out[i].endswith((".yaml", ".yml", ".json")):
            out[i] = str(accelerate_config_file(out[i]))
    return out


def main() -> None:
    from accelerate.commands.launch import launch_command, launch_command_parser

    launch_command(launch_command_parser().parse_args(resolve_config_file(sys.argv[1:])))


if __name__ == "__main__":
    main()
