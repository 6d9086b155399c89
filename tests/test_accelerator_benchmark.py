"""experiments/benchmarks/accelerator.py --quick: every path (pmapped train step, DPM-Solver++
20 and Euler-Maruyama 200 over the devices, likelihood) runs on the 2 forced CPU devices
(with the quick mode's small MLP in place of the U-Net)."""

import numpy as np

from experiments.benchmarks import accelerator


def test_quick_mode_runs_every_path(capsys):
    rows = accelerator.main(["--quick"])
    assert len(rows) == 1
    r = rows[0]
    assert r["config"].startswith("digits_unet") and r["devices"] == 2 and r["per_device_batch"] == 2
    for k in ("train_steps_per_s", "train_images_per_s", "dpmpp20_images_per_s", "em200_images_per_s",
              "nll_points_per_s"):
        assert np.isfinite(r[k]) and r[k] > 0, k
    assert r["train_images_per_s"] == r["train_steps_per_s"] * 4
    assert r["nll_nfe_mean"] >= 2  # an adaptive solve took steps
    out = capsys.readouterr().out
    assert "| digits_unet (quick" in out and "EM 200 images/s" in out
