"""Import first in a benchmark script: fixes the thread count (``--threads N``, default 2) in the environment
before ITK, SimpleITK, elastix or ANTs are imported (each reads these variables at load time)."""

import argparse
import os

_pre = argparse.ArgumentParser(add_help=False)
_pre.add_argument("--threads", type=int, default=2)
THREADS = _pre.parse_known_args()[0].threads
for _k in ("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
           "ANTS_RANDOM_SEED_THREADS"):
    os.environ[_k] = str(THREADS)
os.environ.setdefault("ANTS_RANDOM_SEED", "1")
