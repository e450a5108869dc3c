"""simlab: predict whether two images show the same scene, and explore why."""

import os

# OpenMP threads (XGBoost's, scikit-learn's) sleep instead of spinning while they wait at a barrier.
# Spinning costs nothing on an idle machine but, on a small one shared with the app, a vectorising
# job, a second grid cell or other processes, a spinning thread steals its sibling's core: XGBoost
# with 2 threads ran 5x slower than with 1 on a loaded 2-core machine (benchmarks/README.md). The
# OpenMP runtime reads this once, when it loads (with the first import of scikit-learn or XGBoost,
# which share it), so it is set here, before any simlab module imports them; an explicit setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
