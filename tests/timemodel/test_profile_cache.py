"""Device profiles cached per machine: stored, found again for the same key only, fresh enough, never trusted when
damaged; a quick profile does not replace a full one; executed reports reuse the cached profile and save the one they
used, and --recalibrate measures a fresh one."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import attrs
import orjson
import pytest

from opmeter.cli import main
from opmeter.timemodel import cache
from opmeter.timemodel.profile import DeviceProfile, load_profile

PROFILE = Path(__file__).parents[2] / "reports" / "dsocr-mini-cpu" / "device_profile.json"


@pytest.fixture
def fresh_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("OPMETER_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("OPMETER_PROFILE_MAX_AGE_DAYS", "7")
    return tmp_path / "cache"


def _profile(days_old: float = 0.0, **changes: object) -> DeviceProfile:
    created = (datetime.now(timezone.utc) - timedelta(days=days_old)).isoformat(timespec="seconds")
    return attrs.evolve(load_profile(PROFILE), created=created, **changes)


def test_a_stored_profile_is_found_for_its_key_only(fresh_cache: Path) -> None:
    profile = _profile()
    path = cache.store(profile)
    assert path is not None and path.parent == fresh_cache / "profiles"
    key = cache.MachineKey.of(profile)
    held = cache.lookup(key)
    assert held is not None and held.profile == profile and held.age_days < 0.01
    for other in (attrs.evolve(key, threads=key.threads + 1), attrs.evolve(key, dtype="bfloat16"),
                  attrs.evolve(key, torch_version="0.0"), attrs.evolve(key, device_name="another CPU")):
        assert cache.lookup(other) is None


def test_an_old_profile_is_not_reused(fresh_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    profile = _profile(days_old=8)
    cache.store(profile)
    assert cache.lookup(cache.MachineKey.of(profile)) is None
    monkeypatch.setenv("OPMETER_PROFILE_MAX_AGE_DAYS", "30")
    assert cache.lookup(cache.MachineKey.of(profile)) is not None


def test_a_damaged_cache_file_is_ignored(fresh_cache: Path, caplog: pytest.LogCaptureFixture) -> None:
    profile = _profile()
    path = cache.store(profile)
    assert path is not None
    path.write_bytes(b"{not json")
    assert cache.lookup(cache.MachineKey.of(profile)) is None
    assert "ignoring the cached device profile" in caplog.text
    data = orjson.loads(PROFILE.read_bytes())  # a valid profile of another machine under this key's name
    data["threads"] = 64
    path.write_bytes(orjson.dumps(data))
    assert cache.lookup(cache.MachineKey.of(profile)) is None


def test_a_quick_profile_does_not_replace_a_full_one(fresh_cache: Path) -> None:
    full = _profile(budget="full")
    cache.store(full)
    assert cache.store(_profile(budget="quick")) is None
    held = cache.lookup(cache.MachineKey.of(full))
    assert held is not None and held.profile.budget == "full"
    cache.store(_profile(budget="full", notes=("again",)))
    held = cache.lookup(cache.MachineKey.of(full))
    assert held is not None and held.profile.notes == ("again",)


def test_a_bad_maximum_age_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from opmeter.errors import OpmeterError

    monkeypatch.setenv("OPMETER_PROFILE_MAX_AGE_DAYS", "soon")
    with pytest.raises(OpmeterError, match="OPMETER_PROFILE_MAX_AGE_DAYS"):
        cache.max_age_days()


def test_executed_reports_reuse_the_cached_profile_and_save_it(fresh_cache: Path, tmp_path: Path) -> None:
    run = ["report", "--preset", "deepseek-ocr-toy", "--device", "cpu", "--decode-tokens", "2", "--repeats", "1",
           "--no-profiler", "--threads", "1"]
    assert main([*run, "--out", str(tmp_path / "a")]) == 0
    first = orjson.loads((tmp_path / "a" / "summary.json").read_bytes())["profile"]["origin"]
    assert first.startswith("calibrated on the spot") and "cached in" in first
    assert main([*run, "--out", str(tmp_path / "b")]) == 0
    second = orjson.loads((tmp_path / "b" / "summary.json").read_bytes())["profile"]["origin"]
    assert second.startswith("cached quick profile measured") and "--recalibrate" in second
    saved = [load_profile(tmp_path / d / "device_profile.json") for d in ("a", "b")]
    assert saved[0] == saved[1]  # the second report predicted with the first one's profile, and says so
    assert main([*run, "--out", str(tmp_path / "c"), "--recalibrate"]) == 0
    third = orjson.loads((tmp_path / "c" / "summary.json").read_bytes())["profile"]["origin"]
    assert third.startswith("calibrated on the spot")
    assert load_profile(tmp_path / "c" / "device_profile.json").created >= saved[0].created


def test_the_profile_a_shape_only_report_saves_is_a_valid_profile(tmp_path: Path) -> None:
    run = ["report", "--preset", "deepseek-ocr-toy", "--device", "meta", "--decode-tokens", "2"]
    assert main([*run, "--out", str(tmp_path / "a")]) == 0
    saved = load_profile(tmp_path / "a" / "device_profile.json")  # the defaults of the hardware entry
    assert saved.source == "defaults"
    assert main([*run, "--profile", str(tmp_path / "a" / "device_profile.json"), "--out", str(tmp_path / "b")]) == 0
    assert (tmp_path / "b" / "summary.json").read_bytes() != b""
