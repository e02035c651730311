"""Batch scoring: many captures -> one table, which clients in which capture fail how.

Python API::

    from analyzer.batch import score
    df = score(["captures/", "incident-*.pcapng"], jobs=2)            # local process pool
    df = score(paths, client=distributed.Client("tcp://host:8786"))   # an existing Dask cluster
    with local_cluster(2) as c, distributed.Client(c) as client:      # a local Dask cluster set up for batch
        df = score(paths, client=client)
    df = score(paths, output="results.csv", resume=True)             # write as you go; skip what is done

One row per (capture, client), columns ``BATCH_COLUMNS`` (``file``, ``sha256``, then the pipeline's result
columns). A capture that cannot be read or analysed is one row with ``error`` set; a capture without EMSMDB
client is one row with an empty client and verdict ``inconclusive``. Rows are sorted by file, then client.

Each capture is analysed by :func:`analyzer.pipeline.analyze_capture` in a worker process, which streams the
file (constant memory per worker; see ``analyzer.ingest``). On Dask, the workers must have mailpush installed
and read the capture paths themselves: a path on a filesystem shared by all workers, or an fsspec URL
(``s3://...``, ``gcs://...``, ``http(s)://...``) when the matching filesystem package (s3fs, gcsfs, aiohttp) is
installed on the workers; URL captures are streamed to a local temporary file on the worker, then analysed.
"""

from analyzer.batch.runner import BatchReport, expand_paths, local_cluster, score  # noqa: F401
from analyzer.batch.store import ResultsStore  # noqa: F401
from analyzer.batch.worker import BATCH_COLUMNS, score_one  # noqa: F401
