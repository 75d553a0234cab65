"""For ingestion pipelines: ``mictag tag`` (files in, one JSON object per file out) and the JSON
record it prints (:mod:`mictag.ingest.record`), the shape a workflow tool wraps."""
