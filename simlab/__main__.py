import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from simlab.cli import main  # noqa: E402

if __name__ == "__main__":  # not when a decoding process imports this module again (spawn)
    sys.exit(main())
