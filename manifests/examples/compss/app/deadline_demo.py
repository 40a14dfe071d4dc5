"""A small PyCOMPSs application whose tasks report to the partition's deadline sidecar.

Run by the master (`runcompss ... deadline_demo.py [tasks] [seconds]`); COMPSs sends each
`simulate` task to a worker of the partition, listed in the controller's resources.xml. Inside the
task, `extender.sidecar.api` tells the sidecar of that worker's pod (http://127.0.0.1:9465, same
pod) when the task started and ended and how long it was expected to take; the sidecar pushes the
node's deadline miss ratio to the Pushgateway, which the metrics-aware scheduler reads.
"""

import sys
import time

from pycompss.api.api import compss_wait_on
from pycompss.api.task import task

EXPECTED_S = 2.0
"""What each step is expected to take; a slower (overloaded) worker misses the deadline."""


@task(returns=1)
def simulate(step, seconds):
    # Imported in the task: it runs in the worker's Python process, next to the sidecar.
    from extender.sidecar import api as deadline

    with deadline.task("simulate", expected_seconds=EXPECTED_S):
        end = time.monotonic() + seconds
        total = 0
        while time.monotonic() < end:  # stand-in for real work: keeps a core busy
            total += step
        return total


def main():
    tasks = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 1.5
    results = compss_wait_on([simulate(i, seconds) for i in range(tasks)])
    print(f"{len(results)} steps done")


if __name__ == "__main__":
    main()
