"""The uncounted rule: a compute op (gemm, attention, convolution) without a FLOP formula is never a silent zero."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

from opmeter import OpTracer, load_trace
from opmeter.trace import UncountedOpWarning
from opmeter.trace import categories as cat
from opmeter.trace.trace import Trace

OP = "opmeter_unc.mystery_mm.default"


@pytest.fixture(scope="module")
def mystery_mm() -> Any:
    """A custom op that is a GEMM (categorised ``gemm``) but has no formula."""
    lib = torch.library.Library("opmeter_unc", "FRAGMENT")
    lib.define("mystery_mm(Tensor a, Tensor b) -> Tensor")
    lib.impl("mystery_mm", lambda a, b: a @ b, "CompositeExplicitAutograd")
    cat.register_category("opmeter_unc::mystery_mm", cat.GEMM)
    yield torch.ops.opmeter_unc.mystery_mm
    lib._destroy()


def _run(op: Any) -> Trace:
    a, b = torch.randn(4, 5), torch.randn(5, 3)
    with (pytest.warns(UncountedOpWarning, match=rf"{OP} \(2 calls\)"), torch.no_grad(),
          OpTracer(torch.nn.Identity()) as trace):
        op(a, b)
        op(a, b)
        torch.mm(a, b)
    return trace


def test_uncounted_op_is_reported_not_zero(mystery_mm: Any) -> None:
    trace = _run(mystery_mm)
    assert trace.uncounted_ops == [OP]
    unc = trace.uncounted()
    assert unc.drop(columns="time_s").to_dict("records") == [
        {"op": OP, "category": "gemm", "calls": 2, "bytes_read": 2 * (80 + 60), "bytes_written": 2 * 48}]
    bucket = trace.unclassified()
    assert list(bucket[bucket["reason"] == "uncounted"]["op"]) == [OP]
    assert trace.totals()["uncounted_ops"] == 2
    row = trace.by_operator().set_index("op").loc[OP]
    assert row["flops_tensor"] == 0 and not bool(row["exact"])  # a zero that is flagged, never exact
    assert trace.totals()["flops_tensor"] == 2 * 4 * 3 * 5  # the counted mm only


def test_uncounted_ops_survive_save_and_load(mystery_mm: Any, tmp_path: Path) -> None:
    trace = _run(mystery_mm)
    loaded = load_trace(trace.save(tmp_path / "t.json"))
    assert loaded.uncounted_ops == [OP]
    assert loaded.uncounted()["calls"].tolist() == [2]


def test_older_traces_load_and_infer_uncounted_ops(mystery_mm: Any) -> None:
    """Traces written before the field existed: compute ops that counted no FLOPs at all are uncounted."""
    data = _run(mystery_mm).to_dict(tables=False)
    del data["uncounted_ops"]
    old = Trace.from_dict(data)
    assert old.uncounted_ops == [OP]
    assert old.totals()["uncounted_ops"] == 2


def test_registering_a_formula_makes_the_op_counted(mystery_mm: Any) -> None:
    from opmeter.trace import formulas

    lib = torch.library.Library("opmeter_unc2", "FRAGMENT")
    lib.define("known_mm(Tensor a, Tensor b) -> Tensor")
    lib.impl("known_mm", lambda a, b: a @ b, "CompositeExplicitAutograd")
    cat.register_category("opmeter_unc2::known_mm", cat.GEMM)
    formulas.register_formula("opmeter_unc2::known_mm")(
        lambda a, k, o: (formulas.mm_flops(a[0].shape, a[1].shape), 0.0))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UncountedOpWarning)
        with torch.no_grad(), OpTracer(torch.nn.Identity()) as trace:
            torch.ops.opmeter_unc2.known_mm(torch.randn(4, 5), torch.randn(5, 3))
    assert trace.uncounted_ops == [] and trace.totals()["flops_tensor"] == 2 * 4 * 3 * 5
    lib._destroy()


def test_a_failing_formula_on_a_compute_op_is_uncounted() -> None:
    from opmeter.trace import formulas

    lib = torch.library.Library("opmeter_unc3", "FRAGMENT")
    lib.define("broken_mm(Tensor a, Tensor b) -> Tensor")
    lib.impl("broken_mm", lambda a, b: a @ b, "CompositeExplicitAutograd")
    cat.register_category("opmeter_unc3::broken_mm", cat.GEMM)

    @formulas.register_formula("opmeter_unc3::broken_mm")
    def _broken(a: Any, k: Any, o: Any) -> tuple[int, float]:
        raise ValueError("bad shape")

    with (pytest.warns(UncountedOpWarning, match="opmeter_unc3.broken_mm.default failed"), torch.no_grad(),
          OpTracer(torch.nn.Identity()) as trace):
        torch.ops.opmeter_unc3.broken_mm(torch.randn(4, 5), torch.randn(5, 3))
    assert "opmeter_unc3.broken_mm.default" in trace.formula_errors
    assert trace.uncounted()["op"].tolist() == ["opmeter_unc3.broken_mm.default"]
    lib._destroy()


def test_report_headline_names_uncounted_ops(mystery_mm: Any, tmp_path: Path) -> None:
    from opmeter.join import join, load_joined
    from opmeter.report.markdown import render

    joined = join(_run(mystery_mm))
    assert joined.metadata["uncounted_ops"] == {OP: 2}
    headline = render(joined, {}).split("## Headline numbers")[1].split("\n## ")[0]
    assert f"| compute ops with unknown FLOPs (no formula: uncounted, not zero) | 1 op: `{OP}` (2 calls) |" in headline
    reloaded = load_joined(joined.save(tmp_path / "joined.json"))
    assert reloaded.metadata["uncounted_ops"] == {OP: 2}
    with torch.no_grad(), OpTracer(torch.nn.Identity()) as clean:
        torch.mm(torch.randn(2, 2), torch.randn(2, 2))
    assert "| compute ops with unknown FLOPs (no formula: uncounted, not zero) | none |" in render(join(clean), {})
