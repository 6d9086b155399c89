r"""Start N processes of experiments.main on this machine, joined by jax.distributed.

    python -m experiments.launch --num_processes=2 --devices_per_process=2 -- \
        --config=experiments/configs/toy2d.py --workdir=/tmp/ring2

runs `python -m experiments.main <arguments after -->` N times, adding
--coordinator_address=127.0.0.1:<free port> --num_processes=N --process_id=i, with
JAX_PLATFORMS=cpu and XLA_FLAGS=--xla_force_host_platform_device_count=K for each
process (K CPU devices each; main.py then turns on gloo CPU collectives), so the run
sees N K devices, as a multi-host run on N machines would. On a cluster the same
main.py runs unchanged, one process per host (README, "Several processes").

The launcher waits for the processes and exits with the first failure's status:
- all exit 0: exit 0;
- one exits 143 / 130 (it saved a checkpoint after SIGTERM / SIGINT, as all of them do
  together): the others get `--grace` seconds to finish their part of the save, then
  are killed;
- one dies otherwise (a crash, kill -9): the others cannot make progress without it
  (every step is a collective), so they are killed at once and the launcher says so.
  Restarting the same command resumes all processes from the newest complete checkpoint.
SIGINT / SIGTERM sent to the launcher are passed on to every process (Ctrl-C in a
terminal reaches them directly too; either way they save together and exit).
`--pid_file` writes "i pid" lines, for tools and tests that signal one process.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time

CLEAN_STOP = (130, 143)  # 128 + SIGINT, 128 + SIGTERM: the process saved a checkpoint and exited


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_command(main_args: list[str], num_processes: int, process_id: int, port: int) -> list[str]:
    """The command line of process `process_id` (experiments.main with the multi-host flags;
    a single process runs plain, without jax.distributed)."""
    if num_processes == 1:
        return [sys.executable, "-m", "experiments.main", *main_args]
    return [sys.executable, "-m", "experiments.main", *main_args,
            f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={num_processes}",
            f"--process_id={process_id}"]


def process_env(devices_per_process: int | None, base: dict | None = None) -> dict:
    """The environment of each process: K forced CPU devices (XLA_FLAGS) when
    devices_per_process = K is given; otherwise the platform is left to JAX."""
    env = dict(os.environ if base is None else base)
    env.setdefault("PYTHONUNBUFFERED", "1")
    if devices_per_process:
        flags = [f for f in env.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f]
        env["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={devices_per_process}"])
        env["JAX_PLATFORMS"] = "cpu"
    return env


def _status(code: int) -> str:
    return f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"


def launch(main_args: list[str], num_processes: int, devices_per_process: int | None = None, *,
           port: int | None = None, grace: float = 60.0, pid_file: str | None = None) -> int:
    """Run the processes to the end (module docstring); return the launcher's exit status."""
    if num_processes < 1:
        raise ValueError(f"--num_processes must be >= 1, got {num_processes}.")
    if devices_per_process is not None and devices_per_process < 1:
        raise ValueError(f"--devices_per_process must be >= 1, got {devices_per_process}.")
    if any(a.split("=")[0] in ("--coordinator_address", "--num_processes", "--process_id") for a in main_args):
        raise ValueError("the arguments after -- must not set --coordinator_address, --num_processes or "
                         "--process_id: the launcher sets them.")
    port = port or free_port()
    env = process_env(devices_per_process)
    # Own process group: a Ctrl-C in the terminal reaches the launcher only, which passes it on once.
    procs = [subprocess.Popen(process_command(main_args, num_processes, i, port), env=env, process_group=0)
             for i in range(num_processes)]
    if pid_file:
        with open(pid_file + ".tmp", "w") as f:
            f.writelines(f"{i} {p.pid}\n" for i, p in enumerate(procs))
        os.replace(pid_file + ".tmp", pid_file)

    def forward(signum, frame):
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return _wait(procs, grace)
    finally:
        for sig, h in previous.items():
            signal.signal(sig, h)
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def _wait(procs: list[subprocess.Popen], grace: float) -> int:
    deadline = None
    first_stop = None
    while True:
        codes = [p.poll() for p in procs]
        if all(c is not None for c in codes):
            bad = [(i, c) for i, c in enumerate(codes) if c != 0]
            return 0 if not bad else (bad[0][1] if bad[0][1] > 0 else 128 - bad[0][1])
        for i, c in enumerate(codes):
            if c is None or c == 0:
                continue
            if c in CLEAN_STOP:
                if first_stop is None:
                    first_stop = (i, c)
                    deadline = time.monotonic() + grace
            else:
                alive = [j for j, cj in enumerate(codes) if cj is None]
                for j in alive:
                    procs[j].kill()
                for j in alive:
                    procs[j].wait()
                print(f"launch: process {i} stopped ({_status(c)}); killed the other process(es) "
                      f"{alive} (they cannot go on without it). Run the same command again to resume from "
                      "the newest complete checkpoint.", file=sys.stderr, flush=True)
                return c if c > 0 else 128 - c
        if deadline is not None and time.monotonic() > deadline:
            alive = [j for j, cj in enumerate(codes) if cj is None]
            for j in alive:
                procs[j].kill()
            print(f"launch: process {first_stop[0]} stopped after a signal ({_status(first_stop[1])}) but "
                  f"process(es) {alive} did not finish within {grace:g} s; killed them.", file=sys.stderr,
                  flush=True)
            return first_stop[1]
        time.sleep(0.05)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--" not in argv:
        print("usage: python -m experiments.launch --num_processes=N [--devices_per_process=K] -- "
              "<experiments.main arguments>", file=sys.stderr)
        return 2
    cut = argv.index("--")
    parser = argparse.ArgumentParser(prog="python -m experiments.launch", description=__doc__.split("\n\n")[0])
    parser.add_argument("--num_processes", type=int, required=True, help="processes to start (N)")
    parser.add_argument("--devices_per_process", type=int, default=None,
                        help="K forced CPU devices per process (JAX_PLATFORMS=cpu); omit to leave the platform to JAX")
    parser.add_argument("--port", type=int, default=None, help="coordinator port on 127.0.0.1 (default: a free one)")
    parser.add_argument("--grace", type=float, default=60.0,
                        help="seconds the others get to finish after one exits on SIGTERM/SIGINT")
    parser.add_argument("--pid_file", default=None, help="write 'process_id pid' lines here")
    args = parser.parse_args(argv[:cut])
    try:
        return launch(argv[cut + 1:], args.num_processes, args.devices_per_process, port=args.port,
                      grace=args.grace, pid_file=args.pid_file)
    except ValueError as e:
        print(f"launch: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
