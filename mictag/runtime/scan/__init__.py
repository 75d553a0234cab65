"""A library in, rows out: discovery, decoding in worker processes (shared-memory slots), the
window rule, the pipeline that batches windows into an engine, signals, Ray, and :mod:`.run`,
which ties them to the output files (:mod:`mictag.output`)."""
