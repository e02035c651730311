"""Imported by the multiprocessing fork server at its start (it is in the worker's preload list): when the fork
server is a direct child of a mailpush server, it asks for SIGKILL on that server's death, so ``kill -9`` of the
server does not leave the fork server (and, through their own parent-death signal, its analyses) running.

Importing this module anywhere else does nothing: only a process whose parent is the pid in
``MAILPUSH_SERVER_PID`` arms the signal.
"""

import os

from analyzer.web.jobs import SERVER_PID_ENV, set_parent_death_signal

if os.environ.get(SERVER_PID_ENV) == str(os.getppid()):
    set_parent_death_signal()
    if os.getppid() == 1:  # pragma: no cover - the server died before the signal was armed
        os._exit(1)
