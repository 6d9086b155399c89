#!/usr/bin/env python3
"""Bootstrap and run scoresde on a fresh machine with nothing but Python 3.11.

    python3 dev.py run         # the main job on the embedded default (see README)
    python3 dev.py -m pytest   # the test suite (what .ci/run calls)

Creates .venv/ next to this file on first use and installs the package with its test
extra; re-installs when setup.cfg or pyproject.toml change. Standard library only.
`python3 dev.py -m MODULE ARGS...` runs `.venv/bin/python -m MODULE ARGS...` in the
repository root (so `python3 dev.py -m pytest -k losses -x` passes pytest options);
arguments after `run` are passed on to the main job.
"""

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
PY = VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
STAMP = VENV / ".scoresde-install-stamp"

# Trains the U-Net on the embedded digits (<= 15 min on 2 CPU cores), then writes
# test bits/dim, samples.png and sample-quality numbers to workdir/digits/metrics.json.
# Re-running resumes from the newest checkpoint (a finished run just re-evaluates).
MAIN_JOB = ["-m", "experiments.main", "--config=experiments/configs/digits_unet.py", "--workdir=workdir/digits"]


def _spec_hash() -> str:
    h = hashlib.sha256()
    for name in ("setup.cfg", "pyproject.toml"):
        h.update((ROOT / name).read_bytes())
    return h.hexdigest()


def ensure_env() -> None:
    if sys.version_info < (3, 11):
        sys.exit(f"scoresde needs Python >= 3.11, this is {sys.version.split()[0]}.")
    if not PY.exists():
        print(f"[dev] creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    want = _spec_hash()
    if not STAMP.exists() or STAMP.read_text() != want:
        print("[dev] installing scoresde and its dependencies (about a minute)", flush=True)
        subprocess.check_call([str(PY), "-m", "pip", "install", "-q", "--upgrade", "pip"], cwd=ROOT)
        subprocess.check_call([str(PY), "-m", "pip", "install", "-q", "-e", ".[test]"], cwd=ROOT)
        STAMP.write_text(want)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("run", "-m") or (argv[0] == "-m" and len(argv) < 2):
        print(__doc__)
        return 2
    ensure_env()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    if argv[0] == "-m":
        return subprocess.call([str(PY), *argv], cwd=ROOT, env=env)
    return subprocess.call([str(PY), *MAIN_JOB, *argv[1:]], cwd=ROOT, env=env)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
