"""Similarity search over the embeddings a scan writes (``mictag scan --embeddings``): the index
beside the table (:mod:`mictag.similar.index`) and the queries of ``mictag similar``
(:mod:`mictag.similar.search`)."""
