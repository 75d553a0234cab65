"""The training corpus builder: polyphonic OpenMIC-like clips rendered from recorded-instrument
samples in Debian packages (soundfonts through fluidsynth, drum kits, real recordings)."""
