"""The creativity experiment script end to end on a tiny setting (a subprocess: its absl
flags must not meet those of experiments.main in the same process)."""

import json
import os
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_tiny_creativity_run_writes_its_table(tmp_path):
    md = tmp_path / "creativity.md"
    cmd = [sys.executable, "-m", "experiments.creativity", f"--workdir={tmp_path}",
           f"--results_md={md}", "--nets=resnet", "--n_samples=6", "--n_steps=4",
           "--train_steps=4", "--resnet_channels=8", "--resnet_layers=2", "--patch_sizes=1,3",
           "--calib_samples=2", "--panel_images=2", "--handover_steps=0,4"]
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    log = json.loads((tmp_path / "creativity.json").read_text())
    e = log["nets"]["resnet"]
    assert e["boundary"] == "circular" and len(e["schedules"]["ELS"]) == 4
    assert set(e["schedules"]["ELS"]) <= {1, 3}
    # Handing over after 0 steps is the ELS run itself; after all 4 steps it is the network.
    assert abs(e["handover"]["0"] - e["ELS"]["corr_median"]) < 1e-6
    assert e["handover"]["4"] > 1 - 1e-5
    out = np.load(tmp_path / "resnet_outputs.npz")
    # The ideal score only reproduces training images (the theory's memorisation).
    assert out["ideal"].shape == (6, 8, 8, 1) and np.max(out["nn_ideal"]) < 1e-3
    # The ideal score is the baseline: it never beats itself.
    assert e["ideal"]["beats_ideal_corr"] == 0.0
    text = md.read_text()
    assert "| resnet (circular) | ELS |" in text and "alpha(T) = 0.0125" in text
    assert os.path.exists(tmp_path / "resnet_panel.png")
