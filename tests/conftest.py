"""Test setup: 2 forced host devices (set before jax is imported) for the pmap tests."""

import os

flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in flags:
    os.environ["XLA_FLAGS"] = (flags + " --xla_force_host_platform_device_count=2").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Tests use tiny models, so XLA's compile time dominates their run time; its
# optimisation passes change speed, not the maths the tests check. Off, compiles take
# about half the time, and no test here got slower (the long float64 solves included).
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
# Compiled programs persist between runs in .cache/jax (git-ignored; keyed by the program,
# the compile options and the jax version, so a changed function compiles afresh).
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".cache", "jax"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.1")
# JAX does not persist programs with host callbacks, and equinox's runtime checks (inside
# every diffrax solve) are host callbacks unless EQX_ON_ERROR=nan, which returns NaN where
# they would raise. The tests compare numbers with closed forms, so a NaN fails them
# just as the error would; with it, the diffrax programs are cached too (a ShARK solve:
# 11 s to compile, 1 s from the cache).
os.environ.setdefault("EQX_ON_ERROR", "nan")
