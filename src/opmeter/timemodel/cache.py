"""Device profiles cached per machine, so an executed report calibrates once, not every time.

A profile is stored under the user's cache directory (``OPMETER_CACHE_DIR``, else ``$XDG_CACHE_HOME/opmeter``, else
``~/.cache/opmeter``), in ``profiles/``, under a key of what it measured: device, device name, dtype, threads and
torch version. A later report with the same key reuses it until it is older than ``OPMETER_PROFILE_MAX_AGE_DAYS``
(default 7 days; 0: never reuse); ``opmeter report --recalibrate`` measures a fresh one. A full profile
(``opmeter calibrate``) replaces a quick one of the same key; a quick one never replaces a full one that is still
fresh. A damaged cache file is ignored (and said in the log), never trusted.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Final

import attrs

from opmeter.errors import OpmeterError
from opmeter.timemodel.profile import DeviceProfile, load_profile

log = logging.getLogger(__name__)

CACHE_ENV: Final = "OPMETER_CACHE_DIR"
MAX_AGE_ENV: Final = "OPMETER_PROFILE_MAX_AGE_DAYS"
DEFAULT_MAX_AGE_DAYS: Final = 7.0


@attrs.frozen
class MachineKey:
    """What a profile measured: it is reused only for the same device, name, dtype, threads and torch."""

    device: str
    device_name: str
    dtype: str
    threads: int
    torch_version: str

    @classmethod
    def of(cls, profile: DeviceProfile) -> MachineKey:
        """The key a profile was measured under."""
        return cls(profile.device, profile.device_name, profile.dtype, profile.threads, profile.torch_version)

    def file_name(self) -> str:
        """A readable, file-system-safe name, with a digest of the full key (names may be shortened)."""
        digest = hashlib.sha256(repr(attrs.astuple(self)).encode()).hexdigest()[:12]
        words = re.sub(r"[^A-Za-z0-9.+-]+", "-", f"{self.device}-{self.device_name}")[:60].strip("-")
        return f"{words}-{self.dtype}-t{self.threads}-torch{self.torch_version}-{digest}.json"


@attrs.frozen
class CachedProfile:
    """A profile found in the cache, where, and how old it is."""

    profile: DeviceProfile
    path: Path
    age_days: float


def cache_dir() -> Path:
    """The directory of cached profiles (created when one is stored)."""
    base = os.environ.get(CACHE_ENV) or (Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "opmeter")
    return Path(base) / "profiles"


def max_age_days() -> float:
    """How old a cached profile may be before a report measures a fresh one (``OPMETER_PROFILE_MAX_AGE_DAYS``).

    Raises
    ------
    OpmeterError
        When the environment value is not a non-negative number.
    """
    raw = os.environ.get(MAX_AGE_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_AGE_DAYS
    try:
        days = float(raw)
    except ValueError:
        days = -1.0
    if not 0 <= days < float("inf"):
        raise OpmeterError(f"{MAX_AGE_ENV}={raw!r} is not a number of days >= 0")
    return days


def _age_days(profile: DeviceProfile) -> float | None:
    try:
        created = datetime.fromisoformat(profile.created)
    except ValueError:
        return None
    if created.tzinfo is None:
        created = created.replace(tzinfo=timezone.utc)
    return (datetime.now(timezone.utc) - created).total_seconds() / 86400


def lookup(key: MachineKey) -> CachedProfile | None:
    """The cached profile of ``key`` when there is one, it loads, its key matches and it is fresh enough."""
    path = cache_dir() / key.file_name()
    if not path.is_file():
        return None
    try:
        profile = load_profile(path)
    except OpmeterError as exc:
        log.warning("ignoring the cached device profile %s: %s", path, exc)
        return None
    age = _age_days(profile)
    if MachineKey.of(profile) != key or age is None or age < 0:
        log.warning("ignoring the cached device profile %s: it was not measured for this machine and run", path)
        return None
    limit = max_age_days()
    if limit == 0 or age > limit:  # 0: never reuse
        log.info("the cached device profile %s is %.1f days old (the limit is %s): measuring a fresh one", path, age,
                 limit)
        return None
    return CachedProfile(profile, path, age)


def store(profile: DeviceProfile) -> Path | None:
    """Cache ``profile`` (a quick one does not replace a fresh full one); returns where, or ``None`` when it was
    not stored (an unwritable cache is logged, never an error)."""
    key = MachineKey.of(profile)
    held = lookup(key)
    if held is not None and held.profile.budget == "full" and profile.budget != "full":
        return None
    path = cache_dir() / key.file_name()
    try:
        return profile.save(path)
    except OpmeterError as exc:
        log.warning("the device profile could not be cached in %s: %s", path.parent, exc)
        return None
