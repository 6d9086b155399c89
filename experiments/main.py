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

Multi-host (TPU pods, GPU clusters): every host runs this same command with
--coordinator_address=host0:port --num_processes=N --process_id=i (on TPU pods and
SLURM clusters leave them empty: JAX detects them), which calls
jax.distributed.initialize before anything else. data.batch_size is the GLOBAL batch:
each host reads its own disjoint slice of the data (process_index / process_count),
splits it over its local devices, and gradients are averaged across devices by pmap.
SIGTERM (pre-emption) saves a checkpoint and exits with status 143.
"""

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to an experiment config (get_config()).", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, TensorBoard logs, samples, metrics.")
flags.DEFINE_enum("mode", "train", ["train", "sample", "eval", "guided", "inverse"], "What to do.")
flags.DEFINE_string("coordinator_address", None, "Multi-host: host:port of process 0 (jax.distributed).")
flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes.")
flags.DEFINE_integer("process_id", None, "Multi-host: this process's id.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    if FLAGS.verbosity == 0:  # orbax logs every save at INFO; keep stdout for our metrics
        logging.set_verbosity(logging.WARNING)
    from scoresde import parallel

    parallel.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    # Imported after jax.distributed.initialize, which must come before any backend use.
    from experiments import train

    if FLAGS.mode in ("guided", "inverse"):
        from experiments import guided

        run = getattr(guided, FLAGS.mode)
    else:
        run = {"train": train.train_and_evaluate, "sample": train.sample, "eval": train.evaluate}[FLAGS.mode]
    out = run(FLAGS.config, FLAGS.workdir)
    if FLAGS.mode == "sample":
        print(out)


if __name__ == "__main__":
    app.run(main)
