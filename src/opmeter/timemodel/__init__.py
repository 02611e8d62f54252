"""Predicted time from a trace: device profiles by microbenchmark, the per-op time model, scenarios.

* :mod:`~opmeter.timemodel.profile`: the :class:`DeviceProfile` data model (schema-versioned JSON);
* :mod:`~opmeter.timemodel.calibrate`: the microbenchmarks behind ``opmeter calibrate``;
* :mod:`~opmeter.timemodel.defaults`: documented default profiles for GPU table entries without a measurement;
* :mod:`~opmeter.timemodel.kinds`: which host cost, rate and bandwidth each traced op is charged;
* :mod:`~opmeter.timemodel.model`: the time model over a trace (per cell, module, component, stage; scenarios).
"""

from opmeter.timemodel.profile import DeviceProfile, load_profile

__all__ = ["DeviceProfile", "load_profile"]
