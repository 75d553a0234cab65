"""The scan's output files, and the only code that knows them: the rows and their columns
(:mod:`.rows`), the append-only journal and its write errors (:mod:`.journal`), the writers of
each format (:mod:`.formats`), the lock that keeps one writer per output (:mod:`.lock`) and the
names of the files beside an output (:mod:`.files`). ``mictag scan`` writes through it;
``write-tags`` and ``report`` read through it."""
