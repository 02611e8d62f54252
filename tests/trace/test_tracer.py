"""OpTracer behaviour: attribution, call graph, stages, safety, modes (fake/meta/inference/autocast)."""

from __future__ import annotations

import math
import threading

import orjson
import pytest
import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import _get_current_dispatch_mode_stack
from trace_helpers import MLP, Nested, global_state

from opmeter import OpTracer
from opmeter.errors import OpmeterError
from opmeter.trace import OUTSIDE, ROOT, stage
from opmeter.trace.demo import DemoConfig, DemoTransformer

pytestmark = pytest.mark.usefixtures("clean_globals")


def rows(df, key="module"):
    return {r[key]: r for r in df.to_dict(orient="records")}


def test_module_paths_calls_and_shared_modules(nested: Nested) -> None:
    x = torch.randn(2, 8)
    with torch.no_grad(), OpTracer(nested) as trace:
        nested(x)
    mods = rows(trace.by_module())
    assert set(mods) == {ROOT, "shared", "a", "a.0", "a.1", "b", "b.up", "b.act", "b.down", "unused"}
    assert "a.shared" not in mods  # the shared module keeps its first name
    assert mods[ROOT]["calls"] == 1
    assert mods["b"]["calls"] == 3 and mods["b.up"]["calls"] == 3
    assert mods["shared"]["calls"] == 2
    assert mods["unused"]["calls"] == 0
    assert mods["b.up"]["parent"] == "b" and mods["b"]["parent"] == ROOT and mods["b"]["depth"] == 1
    assert mods["b.up"]["qualified_class"] == "torch.nn.modules.linear.Linear"
    assert (mods["shared"]["fan_in"], mods["shared"]["fan_out"]) == (2, 0)  # called from `a` and from the root
    assert (mods[ROOT]["fan_in"], mods[ROOT]["fan_out"]) == (1, 3)  # <outside>; a, b, shared
    # row order: first-call order, never-called last
    order = list(trace.by_module()["module"])
    assert order[:4] == [ROOT, "a", "a.0", "a.1"] and order[-1] == "unused"
    assert list(trace.uncalled_modules()["module"]) == ["unused"]
    edges = {(r["parent"], r["child"]): r["calls"] for r in trace.edges().to_dict(orient="records")}
    assert edges[("a", "shared")] == 1 and edges[(ROOT, "shared")] == 1
    assert edges[(ROOT, "b")] == 3 and edges[("b", "b.up")] == 3 and edges[(OUTSIDE, ROOT)] == 1
    cls_edges = {(r["parent"], r["child"]): r["calls"] for r in trace.edges(level="class").to_dict(orient="records")}
    assert cls_edges[("MLP", "Linear")] == 6 and cls_edges[("Sequential", "Linear")] == 2


def test_inclusive_equals_self_sums_and_dynamic_stack(nested: Nested) -> None:
    with torch.no_grad(), OpTracer(nested) as trace:
        nested(torch.randn(2, 8))
    df = trace.by_module()
    mods = rows(df)
    # 8x8 linear on 2 rows: 2*2*8*8 = 256 FLOPs per call
    assert mods["shared"]["flops_tensor"] == 2 * 256
    # `a` includes the shared call made from inside `a`, not the one made from the root
    assert mods["a"]["flops_tensor"] == 256 + 256
    assert mods[ROOT]["flops_tensor"] == df["self_flops_tensor"].sum()
    for col in ("ops", "flops_tensor", "flops_cuda", "bytes_read", "bytes_written"):
        assert df[f"self_{col}"].sum() == trace.totals()[col]
    b = mods["b"]
    kids = df[df["parent"] == "b"]
    assert b["flops_tensor"] == b["self_flops_tensor"] + kids["flops_tensor"].sum()
    assert b["ops"] == b["self_ops"] + kids["ops"].sum()


def test_by_module_and_operator_and_category(nested: Nested) -> None:
    with torch.no_grad(), OpTracer(nested) as trace:
        nested(torch.randn(2, 8))
    mo = trace.by_module_and_operator()
    root_mm = mo[(mo["module"] == ROOT) & (mo["category"] == "gemm")]["flops_tensor"].sum()
    assert root_mm == trace.totals()["flops_tensor"]
    b_addmm = mo[(mo["module"] == "b") & (mo["op"] == "aten.addmm.default")].iloc[0]
    assert b_addmm["calls"] == 3 and b_addmm["self_calls"] == 0
    cats = rows(trace.by_category(), "category")
    assert cats["gemm"]["flops_tensor"] == trace.totals()["flops_tensor"]
    assert cats["activation"]["calls"] == 4  # relu once, gelu three times
    classes = rows(trace.by_class(), "class_name")
    assert classes["Linear"]["instances"] == 5 and classes["Linear"]["called_instances"] == 4
    assert classes["MLP"]["calls"] == 3


def test_outside_ops_and_unknown_modules() -> None:
    model = MLP(4, 4).eval()
    helper = nn.Linear(4, 4)  # not in the tree: attributed to the nearest known ancestor (or outside)
    with torch.no_grad(), OpTracer(model) as trace:
        y = model(torch.randn(3, 4))
        z = helper(y) * 2
    assert z.shape == (3, 4)
    mods = rows(trace.by_module())
    assert mods[OUTSIDE]["self_ops"] >= 3  # addmm, mul, randn...
    assert mods[OUTSIDE]["self_flops_tensor"] == 2 * 3 * 4 * 4
    unc = trace.unclassified()
    outside_ops = set(unc[unc["reason"] == "outside modules"]["op"])
    assert {"aten.addmm.default", "aten.mul.Tensor", "aten.randn.default"} <= outside_ops
    share = unc[(unc["reason"] == "outside modules") & (unc["op"] == "aten.addmm.default")]["share_flops"].iloc[0]
    assert 0 < share < 1


def test_custom_op_passes_through_unclassified() -> None:
    lib = torch.library.Library("opmeter_test", "FRAGMENT")
    lib.define("twice(Tensor x) -> Tensor")
    lib.impl("twice", lambda x: x * 2, "CompositeExplicitAutograd")

    class M(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.ops.opmeter_test.twice(x)

    m = M()
    with OpTracer(m) as trace:
        out = m(torch.ones(3))
    assert torch.equal(out, torch.full((3,), 2.0))
    unc = trace.unclassified()
    row = unc[(unc["reason"] == "no category") & (unc["op"] == "opmeter_test.twice.default")]
    assert len(row) == 1 and row.iloc[0]["calls"] == 1
    ops = rows(trace.by_operator(), "op")
    assert ops["opmeter_test.twice.default"]["category"] == "unclassified"
    assert ops["opmeter_test.twice.default"]["exact"] is False or not ops["opmeter_test.twice.default"]["exact"]


def test_prefill_decode_stages_and_glue() -> None:
    torch.manual_seed(0)
    model = DemoTransformer(DemoConfig(n_layers=1)).eval()
    ids = torch.randint(0, 100, (1, 6))
    with OpTracer(model) as trace:
        model.generate(ids, max_new_tokens=4)
    st = trace.stages()
    names = list(st["stage"])
    assert names == ["prefill", "prefill.glue", "decode[0]", "decode.glue", "decode[1]", "decode[2]"]
    assert list(st["tokens"][st["group"] == "decode"]) == [1, 1, 1]
    assert st.set_index("stage").loc["prefill", "tokens"] == 6
    assert st["ops"].sum() == trace.totals()["ops"]
    pre = rows(trace.by_module(stage="prefill"))
    dec = rows(trace.by_module(stage="decode"))
    assert pre[ROOT]["calls"] == 1 and dec[ROOT]["calls"] == 3
    # lm_head: [T, dim] x [dim, vocab]
    cfg = model.config
    assert pre["lm_head"]["flops_tensor"] == 2 * 6 * cfg.dim * cfg.vocab_size
    assert dec["lm_head"]["flops_tensor"] == 3 * 2 * 1 * cfg.dim * cfg.vocab_size
    glue = trace.by_operator(stage=["prefill.glue", "decode.glue"])
    assert set(glue["op"]) >= {"aten.argmax.default", "aten.cat.default"}
    assert trace.by_module(stage="decode")["ops"].iloc[0] == st[st["group"] == "decode"]["ops"].sum()
    with pytest.raises(OpmeterError, match="unknown stage group 'vision'"):
        trace.by_module(stage="vision")
    assert trace.by_module(stage="other")["ops"].sum() == 0  # a standard group absent from this run: empty


def test_explicit_stages_nest_and_override() -> None:
    model = MLP(4, 4).eval()
    with torch.no_grad(), OpTracer(model) as trace:
        with trace.stage("vision"):
            model(torch.randn(2, 4))  # a root call inside an explicit stage: no automatic stage
        model(torch.randn(2, 5, 4))  # [batch, seq, hidden] with seq > 1: prefill
        with stage("vision"):  # global marker, e.g. from inside model code
            model(torch.randn(2, 4))
    st = trace.stages()
    assert list(st["stage"][st["group"] == "vision"]) == ["vision", "vision[1]"]
    assert "prefill" in set(st["stage"])
    vis = rows(trace.by_module(stage="vision"))
    assert vis["up"]["calls"] == 2
    assert rows(trace.by_module(stage="prefill"))["up"]["calls"] == 1


def test_span_of_a_call_that_spans_a_stage_switch_starts_at_the_call() -> None:
    class Staged(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(2, 2)
            self.b = nn.Linear(2, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            with stage("vision"):  # inside the root call: switches stage twice while the root is open
                x = self.a(x)
            return self.b(x)

    model = Staged()
    with OpTracer(model, timing=True) as trace:
        model(torch.randn(1, 2))
    spans = trace.spans().set_index("module")
    assert spans.loc[ROOT, "start_s"] <= spans.loc["a", "start_s"]  # used to start at the end of "vision"
    assert spans.loc[ROOT, "end_s"] >= spans.loc["b", "end_s"]


def test_stage_marks_only_this_threads_tracers() -> None:
    model = MLP(4, 4).eval()
    entered, release = threading.Event(), threading.Event()

    def other() -> None:
        with stage("elsewhere"):  # another thread's code marks a stage while this one traces
            entered.set()
            release.wait(30)

    with torch.no_grad(), OpTracer(model) as trace:
        worker = threading.Thread(target=other)
        worker.start()
        entered.wait(30)
        model(torch.randn(2, 5, 4))
        release.set()
        worker.join()
    assert "elsewhere" not in set(trace.stages()["group"])
    assert rows(trace.by_module(stage="prefill"))["up"]["calls"] == 1


def test_stage_closed_after_the_tracer_changes_nothing() -> None:
    model = MLP(4, 4).eval()
    tracer = OpTracer(model, timing=True, nvtx=False)
    trace = tracer.__enter__()
    with stage("late"):
        model(torch.randn(2, 4))
        tracer.__exit__(None, None, None)
        before = trace.stages()
        spans = list(trace.stage_spans_raw)
    assert list(before["stage"]) == ["late"]
    assert trace.stages().equals(before) and trace.stage_spans_raw == spans  # closing the stage charged nothing


def test_exception_restores_globals_and_keeps_data(nested: Nested) -> None:
    class Boom(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = nn.Linear(8, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.inner(x)
            raise ValueError("boom in forward")

    model = Boom()
    before = global_state()
    with pytest.raises(ValueError, match="boom"), OpTracer(model) as trace:
        model(torch.randn(2, 8))
    assert global_state() == before
    assert trace.complete is False and trace.error == "ValueError: boom in forward"
    assert rows(trace.by_module())["inner"]["flops_tensor"] == 2 * 2 * 8 * 8
    assert trace.totals()["complete"] is False
    # the tracer object can be used again, and a new run is complete
    with torch.no_grad(), OpTracer(nested) as again:
        nested(torch.randn(1, 8))
    assert again.complete is True and again.error is None


def test_mode_leaves_the_stack_even_when_its_exit_fails(
        nested: Nested, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from torch.utils._python_dispatch import TorchDispatchMode

    from opmeter.trace.dispatch import CountingMode

    def broken_exit(self: CountingMode, *exc: object) -> None:
        raise RuntimeError("exit failed")

    before = global_state()
    monkeypatch.setattr(CountingMode, "__exit__", broken_exit)
    above = TorchDispatchMode()
    with OpTracer(nested) as trace:
        nested(torch.randn(1, 8))
        above.__enter__()  # a mode pushed over ours and still open when the tracer exits
    assert _get_current_dispatch_mode_stack() == [above]  # ours is gone, the one above kept
    above.__exit__(None, None, None)
    assert global_state() == before and trace.complete
    assert "exit failed" in capsys.readouterr().err


def test_keyboard_interrupt_restores_globals() -> None:
    class Slow(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.lin(x)
            raise KeyboardInterrupt  # what Ctrl-C raises inside the model (not an Exception: no always_call)

    model = Slow()
    before = global_state()
    with pytest.raises(KeyboardInterrupt), OpTracer(model, timing=True) as trace:
        model(torch.randn(2, 4))
    assert global_state() == before
    assert trace.complete is False and trace.error == "KeyboardInterrupt"
    assert rows(trace.by_module())["lin"]["calls"] == 1
    saved = orjson.loads(orjson.dumps(trace.to_dict()))
    assert saved["complete"] is False and saved["error"] == "KeyboardInterrupt"


def test_enter_twice_nested_and_repeated(nested: Nested) -> None:
    tracer = OpTracer(nested)
    with tracer, pytest.raises(OpmeterError, match="already active"):
        tracer.__enter__()
    outer_tracer = OpTracer(nested)
    with torch.no_grad(), outer_tracer as outer:
        nested(torch.randn(1, 8))
        with OpTracer(nested.b) as inner:
            nested.b(torch.randn(1, 8))
    assert rows(inner.by_module())[ROOT]["calls"] == 1
    assert rows(outer.by_module())["b"]["calls"] == 4
    assert outer.totals()["flops_tensor"] == rows(outer.by_module())[ROOT]["flops_tensor"] + inner.totals()[
        "flops_tensor"]
    with torch.no_grad(), outer_tracer as again:  # the same tracer object, used again
        nested(torch.randn(1, 8))
    assert rows(again.by_module())["b"]["calls"] == 3


def test_nested_tracers_exit_out_of_order_and_other_threads(nested: Nested) -> None:
    before = global_state()
    a, b = OpTracer(nested), OpTracer(nested.b)
    ta = a.__enter__()
    tb = b.__enter__()
    nested(torch.randn(1, 8))
    a.__exit__(None, None, None)  # the outer one first
    nested(torch.randn(1, 8))  # still traced by b only
    b.__exit__(None, None, None)
    assert global_state() == before
    assert rows(ta.by_module())["b"]["calls"] == 3
    assert rows(tb.by_module())[ROOT]["calls"] == 6
    seen: list[int] = []
    with OpTracer(nested) as tt:
        worker = threading.Thread(target=lambda: seen.append(int(nested(torch.randn(1, 8)).numel())))
        worker.start()
        worker.join()
    assert seen == [8] and rows(tt.by_module())[ROOT]["calls"] == 0  # other threads are not traced


def test_call_wrapped_by_someone_else_while_tracing(nested: Nested) -> None:
    """Another library wraps ``nn.Module.__call__`` over ours (keeping ours in its chain), or discards ours."""
    real = nn.Module.__call__
    try:
        t1 = OpTracer(nested)
        t1.__enter__()
        ours = nn.Module.__call__

        def other(self: nn.Module, *args: object, **kwargs: object) -> object:
            return ours(self, *args, **kwargs)

        nn.Module.__call__ = other  # type: ignore[method-assign]
        t1.__exit__(None, None, None)
        with OpTracer(nested) as again:  # used to recurse forever: ours -> other -> ours -> ...
            nested(torch.randn(1, 8))
        assert rows(again.by_module())["b"]["calls"] == 3
        assert nn.Module.__call__ is other
        t2 = OpTracer(nested)
        t2.__enter__()
        nn.Module.__call__ = real  # type: ignore[method-assign]  # ours dropped from the chain
        t2.__exit__(None, None, None)
        with OpTracer(nested) as fresh:
            nested(torch.randn(1, 8))
        assert rows(fresh.by_module())["b"]["calls"] == 3
        assert nn.Module.__call__ is real
    finally:
        nn.Module.__call__ = real  # type: ignore[method-assign]


def test_fake_tensor_and_meta_models() -> None:
    with FakeTensorMode():
        model = MLP(64, 256)
        x = torch.randn(4, 64)
        with OpTracer(model) as trace:
            model(x)
    mods = rows(trace.by_module())
    assert mods["up"]["flops_tensor"] == 2 * 4 * 64 * 256
    assert mods["down"]["flops_tensor"] == 2 * 4 * 256 * 64
    assert trace.metadata["device"] == "cpu"
    assert trace.unclassified()["reason"].eq("no category").sum() == 0

    # FakeTensorMode entered inside the block works too (the tracer sees the ops the fake mode forwards)
    model2 = MLP(16, 32)
    with OpTracer(model2) as inner_fake, FakeTensorMode(allow_non_fake_inputs=True):
        model2(torch.randn(4, 16))
    assert rows(inner_fake.by_module())["up"]["flops_tensor"] == 2 * 4 * 16 * 32
    assert inner_fake.unclassified()["reason"].eq("no category").sum() == 0

    with torch.device("meta"):
        big = DemoTransformer(DemoConfig(dim=1024, n_heads=16, n_kv_heads=4, hidden=4096, n_layers=2,
                                         vocab_size=32000))
    ids = torch.zeros(1, 128, dtype=torch.long, device="meta")
    with OpTracer(big) as mtrace:
        big(ids)
    mmods = rows(mtrace.by_module())
    assert mtrace.metadata["device"] == "meta"
    assert mmods["lm_head"]["flops_tensor"] == 2 * 128 * 1024 * 32000
    assert mmods["layers.0.attn"]["flops_tensor"] > 0
    ops = rows(mtrace.by_operator(), "op")
    # on meta, SDPA takes the math path: two bmm per layer, 4*B*H*L*S*D per layer
    assert ops["aten.bmm.default"]["flops_tensor"] == 2 * 4 * 16 * 128 * 128 * 64


def test_inference_mode_autocast_and_dtypes() -> None:
    torch.manual_seed(0)
    model = MLP(16, 32).eval()
    x = torch.randn(4, 16)
    with torch.no_grad(), OpTracer(model) as ref:
        model(x)
    with torch.inference_mode(), OpTracer(model) as inf:
        model(x)
    # under inference_mode composite ops (linear, ...) reach the mode and are decomposed, as under no_grad
    assert inf.totals()["flops_tensor"] == ref.totals()["flops_tensor"] == 2 * 4 * 16 * 32 * 2
    assert "aten.linear.default" not in set(inf.by_operator()["op"])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16), OpTracer(model) as ac:
        model(x)
    assert ac.totals()["flops_tensor"] == ref.totals()["flops_tensor"]
    assert rows(ac.by_operator(), "op")["aten.addmm.default"]["dtypes"] == "bfloat16"
    assert rows(ref.by_operator(), "op")["aten.addmm.default"]["dtypes"] == "float32"
    assert "aten._to_copy.default" in set(ac.by_operator()["op"])
    half = MLP(16, 32).to(torch.float16)
    with torch.no_grad(), OpTracer(half) as h:
        half(x.half())
    assert h.metadata["dtype"] == "float16"
    # fp16 halves the bytes of the GEMMs' inputs
    mm16 = rows(h.by_module())["up"]["bytes_read"]
    mm32 = rows(ref.by_module())["up"]["bytes_read"]
    assert mm16 * 2 == mm32


def test_counts_off_timing_spans_event_log_and_shapes(tmp_path) -> None:
    torch.manual_seed(0)
    model = DemoTransformer(DemoConfig(n_layers=1)).eval()
    ids = torch.randint(0, 100, (1, 5))
    with OpTracer(model, count_ops=False, timing=True) as light:
        model.generate(ids, max_new_tokens=2)
    mods = rows(light.by_module())
    assert mods[ROOT]["calls"] == 2 and math.isnan(mods[ROOT]["flops_tensor"])
    assert mods[ROOT]["time_s"] > 0 and mods["layers.0"]["time_s"] <= mods[ROOT]["time_s"]
    log = tmp_path / "events.jsonl"
    with OpTracer(model, timing=True, event_log=log, record_shapes=True, nvtx="modules") as full:
        model.generate(ids, max_new_tokens=2)
    events = [orjson.loads(line) for line in log.read_bytes().splitlines()]
    assert len(events) == full.totals()["ops"]
    assert sum(e["flops_tensor"] for e in events) == full.totals()["flops_tensor"]
    assert {e["stage"] for e in events} >= {"prefill", "decode[0]"}
    mm = next(e for e in events if e["op"] == "aten.mm.default" and e["module"] == "lm_head")
    assert mm["input_shapes"] == "[5, 64];[64, 512]" and mm["dtype"] == "float32" and mm["time_s"] >= 0
    spans = full.spans()
    assert len(spans) == rows(full.by_module())[ROOT]["calls"] + (spans["module"] != ROOT).sum()
    assert (spans["end_s"] >= spans["start_s"]).all()
    by_mod = rows(full.by_module())
    assert by_mod[ROOT]["time_s"] >= by_mod["layers.0"]["time_s"] >= by_mod["layers.0.attn"]["time_s"] > 0
    assert not math.isnan(full.totals()["time_s"])
    shapes = full.shapes()
    assert ((shapes["module"] == "lm_head") & (shapes["input_shapes"] == "[1, 64];[64, 512]")).any()
    out = full.to_chrome_trace(tmp_path / "spans.json")
    doc = orjson.loads(out.read_bytes())
    assert sum(1 for e in doc["traceEvents"] if e["ph"] == "X" and e["tid"] == 1) == len(spans)
    stage_events = [e for e in doc["traceEvents"] if e["ph"] == "X" and e["tid"] == 0]
    assert [e["name"] for e in stage_events][:3] == ["setup", "prefill", "prefill.glue"]
    assert abs(sum(e["dur"] for e in stage_events) / 1e6 - full.totals()["time_s"]) < 1e-3


def test_metadata_merge_and_bad_arguments(tmp_path) -> None:
    model = MLP(4, 4)
    model.opmeter_metadata = {"routing": "shape-only"}  # type: ignore[assignment]
    with OpTracer(model, metadata={"workload": "w1"}) as trace:
        model(torch.randn(1, 4))
    assert trace.metadata["routing"] == "shape-only" and trace.metadata["workload"] == "w1"
    assert trace.metadata["model_class"] == "MLP" and trace.metadata["torch_version"] == torch.__version__
    with pytest.raises(OpmeterError, match=r"nn\.Module"):
        OpTracer(lambda x: x)  # type: ignore[arg-type]
    with pytest.raises(OpmeterError, match="nvtx"):
        OpTracer(model, nvtx="yes")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OpmeterError, match="cannot write the event log"), OpTracer(
            model, event_log=blocker / "sub" / "events.jsonl"):
        pass
    before = global_state()
    with pytest.raises(OpmeterError, match="is a directory"), OpTracer(model, event_log=tmp_path):
        pass
    assert global_state() == before
    late = tmp_path / "late.jsonl"
    with pytest.raises(OpmeterError, match="cannot write the event log"), OpTracer(
            model, event_log=late) as logged:
        model(torch.randn(1, 4))
        late.mkdir()  # the target became a directory meanwhile: the rename at exit fails
    assert logged.complete and logged.totals()["ops"] > 0 and (tmp_path / "late.jsonl.partial").stat().st_size
    assert global_state() == before


def test_streaming_memory_is_bounded() -> None:
    model = MLP(4, 4).eval()
    x = torch.randn(1, 4)
    with torch.no_grad(), OpTracer(model) as trace:
        for _ in range(2000):
            model(x)
    assert trace.totals()["ops"] >= 2000 * 4
    n_cells = sum(len(v) for v in trace.cells.values())
    assert n_cells < 40  # one accumulator per (stage group, call path, op), not per op
    # each root call is a stage (forward[i]: 2D float input has no sequence length), plus setup and other.glue
    assert len(trace.stage_records) == 2000 + 2


def test_other_threads_do_not_break() -> None:
    model = MLP(4, 4)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            model(torch.randn(1, 4))
        except BaseException as exc:  # pragma: no cover
            errors.append(exc)

    with OpTracer(model):
        t = threading.Thread(target=work)
        t.start()
        t.join()
    assert not errors


def test_an_untimed_trace_refuses_a_chrome_trace(tmp_path) -> None:
    from torch import nn

    from opmeter.errors import OpmeterError
    from opmeter.trace import OpTracer

    model = nn.Linear(4, 4)
    with OpTracer(model) as trace:
        model(torch.randn(1, 4))
    with pytest.raises(OpmeterError, match="not timed"):
        trace.to_chrome_trace(tmp_path / "spans.json")
    assert not (tmp_path / "spans.json").exists()
