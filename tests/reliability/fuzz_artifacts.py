"""Fuzzer over the artifacts a user may be handed: traces, joined files, report summaries, device profiles and
decode-length sidecars. Each mutation (a field's value or type replaced, a key removed, nesting, size, damaged bytes)
goes to the commands that read that artifact, in this process, under an alarm; the outcome of each case is one of

- ``accepted``: exit 0, a complete output directory (the mutation kept the artifact valid),
- ``clean``: exit 1 with one line, nothing written, the inputs unchanged,
- ``traceback``, ``noisy`` (more than one line), ``wrote`` (output left after a failure), ``lost`` (an input changed),
  ``hang`` (past the alarm): the failures.

Run by ``test_fuzz.py`` in a subprocess with memory and CPU limits: ``python fuzz_artifacts.py WORKDIR REPO``;
prints one JSON object with the counts and the failing cases.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import random
import shutil
import signal
import sys
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

TOY = ["--preset", "deepseek-ocr-toy", "--device", "meta"]
CASE_SECONDS = 60
REPLACEMENTS: list[Any] = ["x", None, [1], {}, -1, 0, -1e18, 1e308, True, 2**70, 7.9, "", "abc" * 3]


class Hang(Exception):
    """The case ran past its alarm."""


def _alarm(signum: int, frame: Any) -> None:
    raise Hang


_DEEP = "__opmeter_fuzz_deep__"


def _with_deep(tree: Any, path: tuple[Any, ...], n: int, gz: bool) -> bytes:
    """``tree`` with the value at ``path`` nested ``n`` objects deep (spliced as text: too deep for ``json``)."""
    text = json.dumps(_set(tree, path, _DEEP)).replace(json.dumps(_DEEP), '{"a":' * n + "1" + "}" * n, 1)
    return gzip.compress(text.encode(), mtime=0) if gz else text.encode()


def _paths(value: Any, prefix: tuple[Any, ...] = (), depth: int = 4) -> Iterator[tuple[Any, ...]]:
    """Every key path of a JSON tree down to ``depth`` (lists: their first two items)."""
    if depth == 0:
        return
    items: list[tuple[Any, Any]] = []
    if isinstance(value, dict):
        items = list(value.items())
    elif isinstance(value, list):
        items = list(enumerate(value[:2]))
    for key, child in items:
        yield (*prefix, key)
        yield from _paths(child, (*prefix, key), depth - 1)


def _set(tree: Any, path: tuple[Any, ...], value: Any, delete: bool = False) -> Any:
    tree = json.loads(json.dumps(tree))
    node = tree
    for key in path[:-1]:
        node = node[key]
    if delete and isinstance(node, dict):
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return tree


def _encode(tree: Any, gz: bool) -> bytes:
    raw = json.dumps(tree, allow_nan=True).encode()
    return gzip.compress(raw, mtime=0) if gz else raw


def mutations(raw: bytes, gz: bool, n: int, rng: random.Random) -> list[tuple[str, bytes]]:
    """``n`` value mutations of the JSON in ``raw`` plus the byte-level ones every artifact gets."""
    tree = json.loads(gzip.decompress(raw) if gz else raw)
    paths = list(_paths(tree))
    top = [p for p in paths if len(p) == 1]
    chosen = top + rng.sample(paths, min(len(paths), max(0, n - len(top))))
    out: list[tuple[str, bytes]] = []
    for path in chosen[:n]:
        label = "/".join(str(k) for k in path)
        if rng.random() < 0.2 and isinstance(path[-1], str):
            out.append((f"del {label}", _encode(_set(tree, path, None, delete=True), gz)))
        else:
            value = rng.choice(REPLACEMENTS)
            out.append((f"{label}={str(value)[:20]}", _encode(_set(tree, path, value), gz)))
    plain = gzip.decompress(raw) if gz else raw
    out += [
        ("empty file", b""),
        ("truncated", raw[: len(raw) // 2]),
        ("not json", b"\x00\xff garbage"),
        ("a list", _encode([1, 2], gz)),
        ("nested 100k deep", ("[" * 100_000 + "]" * 100_000).encode()),
        ("nested 1000 deep", _with_deep(tree, top[0], 1000, gz) if top else b"{}"),
        ("infinity", plain.replace(b"1", b"Infinity", 1)),
        ("gzip bomb", gzip.compress(b" " * (96 << 20), compresslevel=1)),
        ("corrupt deflate", raw[:20] + bytes(b ^ 0x55 for b in raw[20:60]) + raw[60:] if gz else
         gzip.compress(plain)[:-12]),
    ]
    return out


def _snapshot(paths: list[Path]) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    for root in paths:
        for p in [root] if root.is_file() else sorted(root.rglob("*")):
            if p.is_file():
                files[str(p)] = p.read_bytes()
    return files


def run_case(argv: list[str], inputs: list[Path], out: Path) -> tuple[str, str]:
    """Run ``opmeter ARGV`` in-process and classify the outcome."""
    from opmeter.cli import main

    before = _snapshot(inputs)
    err = io.StringIO()
    signal.alarm(CASE_SECONDS)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main(argv)
    except Hang:
        return "hang", f"past {CASE_SECONDS} s"
    except BaseException as exc:  # the failure the fuzzer looks for
        tb = traceback.extract_tb(exc.__traceback__)[-1]
        return "traceback", f"{type(exc).__name__}: {str(exc)[:160]} at {Path(tb.filename).name}:{tb.lineno}"
    finally:
        signal.alarm(0)
    text = err.getvalue()
    if _snapshot(inputs) != before:
        return "lost", "an input changed"
    if code == 0:
        if out.exists() and not (out / ".opmeter-output.json").is_file():
            return "wrote", "exit 0 without a complete output directory"
        return "accepted", ""
    lines = [line for line in text.splitlines() if line.strip()]
    if out.exists():
        return "wrote", f"exit {code} and {out} exists"
    if code != 1 or len(lines) != 1 or not lines[0].startswith("opmeter"):
        return "noisy", f"exit {code}: {text.strip()[:300]}"
    return "clean", lines[0][:160]


Setup = Callable[[Path], tuple[list[str], list[Path]]]
"""Writes a case's mutated input into its directory; returns the command line and the inputs to watch."""


def _report_from_trace(d: Path, data: bytes) -> tuple[list[str], list[Path]]:
    (d / "trace.json").write_bytes(data)
    return ["report", "--trace", str(d / "trace.json"), "--out", str(d / "out")], [d / "trace.json"]


def _show(d: Path, data: bytes) -> tuple[list[str], list[Path]]:
    (d / "trace.json").write_bytes(data)
    return ["show", str(d / "trace.json")], [d / "trace.json"]


def _compare_with(name: str, good: Path) -> Callable[[Path, bytes], tuple[list[str], list[Path]]]:
    def setup(d: Path, data: bytes) -> tuple[list[str], list[Path]]:
        shutil.copytree(good, d / "b")
        (d / "b" / name).write_bytes(data)
        return ["compare", str(good), str(d / "b"), "--out", str(d / "out")], [d / "b"]
    return setup


def _profile_for(good: Path) -> Callable[[Path, bytes], tuple[list[str], list[Path]]]:
    def setup(d: Path, data: bytes) -> tuple[list[str], list[Path]]:
        (d / "profile.json").write_bytes(data)
        return ["report", "--trace", str(good / "trace.json"), "--profile", str(d / "profile.json"), "--out",
                str(d / "out")], [d / "profile.json"]
    return setup


def _sidecar_in(pages: Path) -> Callable[[Path, bytes], tuple[list[str], list[Path]]]:
    def setup(d: Path, data: bytes) -> tuple[list[str], list[Path]]:
        shutil.copytree(pages, d / "pages")
        (d / "pages" / "decode_tokens.json").write_bytes(data)
        return ["report", *TOY, "--images", str(d / "pages"), "--out", str(d / "out")], [d / "pages"]
    return setup


def _cases(work: Path, repo: Path, rng: random.Random) -> Iterator[tuple[str, Setup]]:
    """(label, setup) for every case: each artifact's mutations, sent to each command that reads it."""
    good = work / "good"
    sidecar = json.dumps({"a.png": 3, "b.png": 2}).encode()
    plan: list[tuple[str, bytes, bool, int, list[Callable[[Path, bytes], tuple[list[str], list[Path]]]]]] = [
        ("trace", (good / "trace.json").read_bytes(), False, 30, [_report_from_trace, _show]),
        ("joined", (good / "joined.json.gz").read_bytes(), True, 25, [_compare_with("joined.json.gz", good)]),
        ("summary", (good / "summary.json").read_bytes(), False, 15, [_compare_with("summary.json", good)]),
        ("profile", (repo / "reports" / "dsocr-mini-cpu" / "device_profile.json").read_bytes(), False, 25,
         [_profile_for(good)]),
        ("sidecar", sidecar, False, 2, [_sidecar_in(work / "pages")]),
    ]
    for kind, raw, gz, n, commands in plan:
        cases = mutations(raw, gz, n, rng)
        for label, data in cases[:8] if kind == "sidecar" else cases:  # a set report traces: keep them few
            for command in commands:
                yield f"{kind} {label} ({getattr(command, '__name__', 'setup')})", \
                    (lambda d, c=command, b=data: c(d, b))


def _seed_inputs(work: Path) -> None:
    from PIL import Image

    from opmeter.cli import main

    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["report", *TOY, "--decode-tokens", "2", "--out", str(work / "good"), "--compress"]) == 0
    with gzip.open(work / "good" / "trace.json.gz") as fh:
        (work / "good" / "trace.json").write_bytes(fh.read())
    (work / "pages").mkdir()
    Image.new("RGB", (300, 200), "white").save(work / "pages" / "a.png")
    Image.new("RGB", (200, 300), "white").save(work / "pages" / "b.png")


def main(work: Path, repo: Path) -> dict[str, Any]:
    """Seed the inputs, run every case, return the counts and the failing cases."""
    import logging

    logging.disable(logging.WARNING)  # the fallbacks' warnings are not the one line under test
    signal.signal(signal.SIGALRM, _alarm)
    _seed_inputs(work)
    counts = {k: 0 for k in ("accepted", "clean", "traceback", "noisy", "wrote", "lost", "hang")}
    failures, accepted = [], []
    for i, (label, setup) in enumerate(_cases(work, repo, random.Random(20261207))):
        case_dir = work / f"case-{i}"
        case_dir.mkdir()
        argv, inputs = setup(case_dir)
        outcome, detail = run_case(argv, inputs, case_dir / "out")
        counts[outcome] += 1
        if outcome not in ("accepted", "clean"):
            failures.append({"case": label, "outcome": outcome, "detail": detail})
        elif outcome == "accepted":
            accepted.append(label)
        shutil.rmtree(case_dir, ignore_errors=True)
    return {"cases": sum(counts.values()), **counts, "failures": failures, "accepted_cases": accepted}


if __name__ == "__main__":
    result = main(Path(sys.argv[1]), Path(sys.argv[2]))
    print(json.dumps(result))
