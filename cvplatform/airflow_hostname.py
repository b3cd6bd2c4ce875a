"""The ``hostname`` Airflow records for a task instance run by a stack worker (``[core] hostname_callable``).

Several Celery workers of ``make stack`` share one machine, so the machine's name would not tell
them apart: each worker runs with ``CVPLATFORM_AIRFLOW_WORKER=<its name>`` and
``AIRFLOW__CORE__HOSTNAME_CALLABLE=cvplatform.airflow_hostname.worker_hostname``, and its task
instances carry that name (REST API ``taskInstances[].hostname``, the UI's "Host"). Without the
variable it is the machine's fully qualified name, as Airflow's default.

Example:
    >>> import os
    >>> os.environ["CVPLATFORM_AIRFLOW_WORKER"] = "worker-1"
    >>> worker_hostname()
    'worker-1'
    >>> del os.environ["CVPLATFORM_AIRFLOW_WORKER"]
"""

from __future__ import annotations

import os
import socket

ENV = "CVPLATFORM_AIRFLOW_WORKER"


def worker_hostname() -> str:
    """The stack worker's name (``$CVPLATFORM_AIRFLOW_WORKER``), else the machine's fully qualified name."""
    return os.environ.get(ENV) or socket.getfqdn()
