"""The scanning runtime: :mod:`.scan` (from a library to rows) and :mod:`.engines` (the inference
engines behind one interface, how one is chosen, and the checks of a fast path). Never imports
torch unless the torch engine is chosen, and never the export or training code."""
