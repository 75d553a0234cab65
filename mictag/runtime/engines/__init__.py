"""The inference engines behind one interface (:mod:`mictag.runtime.engines.base`)."""
