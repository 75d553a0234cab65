"""Nothing phones home. mictag sends nothing anywhere, and keeps the libraries it loads from doing so.

Each library's own opt-out is an environment variable read once, when the library starts, so
:func:`keep_quiet` sets them when ``mictag`` is imported: before any of them loads, in this process
and in every process it starts (decode workers inherit the environment; Ray's workers get it
through the job's runtime environment, :data:`OPT_OUTS`). A variable the user has set is left
as it is: that is how a user opts in where a library offers it (e.g. ``ORT_DISABLE_TELEMETRY=0``).

- ONNX Runtime (1.29 and later, Linux and macOS): 1DS telemetry (a device id and an event store under
  ``~/.cache/Microsoft/DeveloperTools/.onnxruntime``, uploaded to Microsoft): ``ORT_DISABLE_TELEMETRY``.
- Ray (``--ray``): usage statistics reported hourly to usage-stats.ray.io: ``RAY_USAGE_STATS_ENABLED``.
- Hugging Face hub (``mictag models pull``, the first scan's download): telemetry calls, which only
  some libraries make: ``HF_HUB_DISABLE_TELEMETRY``.
- OpenVINO: its usage events go through the ``openvino_telemetry`` package, which mictag hides while
  it imports OpenVINO (:mod:`mictag.runtime.engines.openvino`); nothing is written under ``~/intel``.
"""

from __future__ import annotations

import os
import sys
import warnings

OPT_OUTS = {
    "ORT_DISABLE_TELEMETRY": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "HF_HUB_DISABLE_TELEMETRY": "1",
}


def keep_quiet() -> dict[str, str]:
    """Set every opt-out the user has not set; the opt-outs now in force.

    ONNX Runtime reads its opt-out when it is imported: a program that imported it before mictag,
    with the variable unset, has already started its telemetry (the device id is written). Its
    events are then switched off from here on, and a warning says how to avoid it."""
    late = "onnxruntime" in sys.modules and "ORT_DISABLE_TELEMETRY" not in os.environ
    for name, value in OPT_OUTS.items():
        os.environ.setdefault(name, value)
    if late:
        disable = getattr(sys.modules["onnxruntime"], "disable_telemetry_events", None)
        if disable is not None:
            disable()
        warnings.warn("onnxruntime was imported before mictag, with its telemetry on (it has written a device id "
                      "under ~/.cache/Microsoft): import mictag first, or set ORT_DISABLE_TELEMETRY=1",
                      RuntimeWarning, stacklevel=3)
    return {name: os.environ[name] for name in OPT_OUTS}
