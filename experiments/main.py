r"""Entry point: train, sample or evaluate a score-based model (run from the repository root).

    python -m experiments.main --config=experiments/configs/digits_vp.py --workdir=/tmp/digits
    python -m experiments.main --config=experiments/configs/digits_vp.py --workdir=/tmp/digits --mode=eval
    python -m experiments.main --config=experiments/configs/toy2d.py:ring --config.training.num_steps=2000 ...

--mode=train trains (resuming from the newest good checkpoint in --workdir; restart
the same command after a crash or kill -9) and then evaluates; --mode=sample writes a
sample grid; --mode=eval writes workdir/metrics.json (test bits/dim with the ODE
likelihood, samples.png, sample-quality numbers) from the checkpoint selected on
validation data; --mode=guided (class-conditional models) writes classifier-free guided
sample grids for each guidance.weights, --mode=inverse inpaints and 2x super-resolves the
test images (experiments/guided.py).

Consistency models are the same modes on a config with a `consistency` section
(experiments/configs/digits_consistency.py): --mode=train distils (or ECT-tunes) from the
diffusion checkpoint in consistency.init_from, resumable like any run; --mode=eval writes
sample quality at 1, 2 and 4 steps; --mode=sample draws sampling.n_steps-step samples:

    python -m experiments.main --config=experiments/configs/digits_consistency.py:distillation \
        --workdir=/tmp/digits_cd --config.consistency.init_from=/tmp/digits_ref
    python -m experiments.main --config=experiments/configs/digits_consistency.py:tuning \
        --workdir=/tmp/digits_ct --mode=sample --config.sampling.n_steps=1

Multi-host (TPU pods, GPU clusters): every host runs this same command with
--coordinator_address=host0:port --num_processes=N --process_id=i, or with
--distributed alone on TPU pods and SLURM / Open MPI clusters (JAX detects the rest);
jax.distributed.initialize runs before anything else, and a process that cannot join
within --init_timeout seconds stops with a one-line error. On one machine,
`python -m experiments.launch --num_processes=2 --devices_per_process=2 -- <these
flags>` starts the processes (experiments/launch.py). data.batch_size is the GLOBAL
batch: each host reads its own rows of every global batch, splits them over its local
devices, and gradients are averaged across all devices by pmap; the run equals a
single-process run on as many devices (README, "Several processes").
SIGTERM (pre-emption) and SIGINT (Ctrl-C) save a checkpoint and exit with status 143
or 130 and a one-line message.
"""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to an experiment config (get_config()).", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, TensorBoard logs, samples, metrics.")
flags.DEFINE_enum("mode", "train", ["train", "sample", "eval", "guided", "inverse"], "What to do.")
flags.DEFINE_string("coordinator_address", None, "Multi-host: host:port of process 0 (jax.distributed).")
flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes.")
flags.DEFINE_integer("process_id", None, "Multi-host: this process's id.")
flags.DEFINE_bool("distributed", False, "Multi-host with auto-detection (TPU pods, SLURM, Open MPI): call "
                  "jax.distributed.initialize() without an address.")
flags.DEFINE_float("init_timeout", 300.0, "Multi-host: seconds to wait for all processes to join before "
                   "failing with an error.")
flags.DEFINE_bool("cpu_collectives", None, "Multi-host on CPU devices: gloo collectives across processes "
                  "(default: on when JAX_PLATFORMS=cpu and there are several processes).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    if FLAGS.verbosity == 0:  # orbax logs every save at INFO; keep stdout for our metrics
        logging.set_verbosity(logging.WARNING)
    from scoresde import parallel

    multi = FLAGS.distributed or FLAGS.coordinator_address is not None or (FLAGS.num_processes or 1) > 1
    cpu = FLAGS.cpu_collectives
    if cpu is None:
        cpu = multi and os.environ.get("JAX_PLATFORMS", "") == "cpu"
    if cpu:
        parallel.use_cpu_collectives()
    try:
        parallel.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id,
                                        timeout_s=FLAGS.init_timeout, auto=FLAGS.distributed)
    except ConnectionError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(3)
    # Imported after jax.distributed.initialize, which must come before any backend use.
    from experiments import train

    if FLAGS.mode in ("guided", "inverse"):
        from experiments import guided

        run = getattr(guided, FLAGS.mode)
    else:
        run = {"train": train.train_and_evaluate, "sample": train.sample, "eval": train.evaluate}[FLAGS.mode]
    try:
        out = run(FLAGS.config, FLAGS.workdir)
    except KeyboardInterrupt:  # SIGINT outside the training steps (which save and exit 130 themselves)
        print(f"SIGINT received during --mode={FLAGS.mode} outside the training steps: stopped without "
              "saving (the newest checkpoint in the workdir is intact).", file=sys.stderr, flush=True)
        sys.exit(130)
    if FLAGS.mode == "sample" and parallel.process_info()[0] == 0:
        print(out)


if __name__ == "__main__":
    app.run(main)
