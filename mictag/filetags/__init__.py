"""Writing the instruments a scan found into each file's own metadata (`mictag write-tags`).

``formats``: one small tag writer per tag system (Vorbis comments, ID3v2.4, MP4 freeform atoms),
behind one registry. ``write``: the library function, :func:`mictag.filetags.write.write_tags`,
which reads a scan's output, writes the files whose rows still describe them and keeps those rows
in step so a rescan skips them. ``command``: the click command over it.

Nothing is imported here, so ``mictag --help`` does not load mutagen.
"""
