import sys

from simlab.jobs.worker import main

if __name__ == "__main__":
    sys.exit(main())
