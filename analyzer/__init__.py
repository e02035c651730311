"""mailpush: why does this Outlook client not get new-mail notifications?

Pipeline stages, each a sub-package with one typed input and output; no stage imports a later one:

    ingest     bytes on disk        -> FrameBatch stream + CaptureInfo      (analyzer.ingest)
    dissect    FrameBatch stream    -> events (Event rows / DataFrame)      (analyzer.dissect)
    correlate  events + CaptureInfo -> ClientActivity per client            (analyzer.correlate)
    verdict    ClientActivity       -> ClientVerdict, CaptureResult         (analyzer.verdict)
    report     CaptureResult        -> text / JSON / CSV / HTML / plots     (analyzer.report)

``analyzer.pipeline`` wires the stages together; the CLI, batch scoring, the web service and the notebooks
all go through it.
"""

__version__ = "0.1.0"
