"""The creativity experiment script end to end on a tiny setting: cifar10 (32x32x3) under
tfds.testing.mock_data, a seeded 20-image subset. A subprocess, because its absl flags
must not meet those of experiments.main in the same process. (The digits default is the
run in experiments/benchmarks/results/creativity.md.)"""

import json
import os
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MOCK_RUN = """
import sys
import tensorflow_datasets as tfds
from absl import app
from experiments import creativity
with tfds.testing.mock_data(num_examples=50, policy=tfds.testing.MockPolicy.USE_CODE):
    app.run(creativity.main, argv=sys.argv)
"""


def test_tiny_run_on_a_tfds_set_writes_its_table(tmp_path):
    md = tmp_path / "c.md"
    cmd = [sys.executable, "-c", MOCK_RUN, "--dataset=cifar10", "--max_train=20",
           f"--workdir={tmp_path}", f"--results_md={md}", "--nets=resnet", "--n_samples=3",
           "--n_steps=2", "--train_steps=2", "--resnet_channels=8", "--resnet_layers=2",
           "--patch_sizes=1,3", "--calib_samples=2", "--panel_images=2", "--handover_steps=0,2"]
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    log = json.loads((tmp_path / "creativity.json").read_text())
    assert log["dataset"] == "cifar10" and log["n_train"] == 20 and log["shape"] == [32, 32, 3]
    e = log["nets"]["resnet"]
    assert e["boundary"] == "circular" and len(e["schedules"]["ELS"]) == 2
    assert set(e["schedules"]["ELS"]) <= {1, 3}
    # Handing over after 0 steps is the ELS run itself; after both steps it is the network.
    assert abs(e["handover"]["0"] - e["ELS"]["corr_median"]) < 1e-6
    assert e["handover"]["2"] > 1 - 1e-5
    # The ideal score only reproduces training images (the theory's memorisation), and it
    # is the baseline: it never beats itself.
    out = np.load(tmp_path / "resnet_outputs.npz")
    assert out["network"].shape == (3, 32, 32, 3) and np.max(out["nn_ideal"]) < 1e-3
    assert e["ideal"]["beats_ideal_corr"] == 0.0
    text = md.read_text()
    assert "cifar10 training split (20 images, a seeded subset" in text
    assert "| resnet (circular) | ELS |" in text and "alpha(T) = 0.0125" in text
    assert os.path.exists(tmp_path / "resnet_panel.png")
