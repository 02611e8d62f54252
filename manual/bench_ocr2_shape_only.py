"""Shape-only DeepSeek-OCR-2 at full size: trace + predict of the standard page on meta, timed.

Usage: ``python manual/bench_ocr2_shape_only.py [--tokens 512] [--workload dsocr2-standard]``. Builds the model on
meta, traces one fixed-budget generation (vision request stage marked as the pipeline does), predicts it, joins
them, and prints one line: ``ocr2_shape_only build_s=... trace_s=... predict_s=... join_s=... total_s=...
cpu_s=... trace_cpu_s=... tensor_rel_max=...`` (``tensor_rel_max``: the largest per-component tensor-core FLOP
difference, trace vs prediction). The target is ``total_s <= 60`` (wall clock; ``cpu_s`` is the process CPU time,
which a shared machine inflates much less).
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--workload", default="dsocr2-standard")
    args = parser.parse_args()
    cpu0, t0 = time.process_time(), time.perf_counter()
    from opmeter.join import join
    from opmeter.models.base import RunRequest, marked_stages
    from opmeter.models.deepseek_ocr2.adapter import DeepseekOcr2Adapter
    from opmeter.trace import OpTracer

    adapter = DeepseekOcr2Adapter()
    run = adapter.prepare(RunRequest(preset="full", workload=args.workload, device="meta",
                                     decode_tokens=args.tokens))
    t1, c1 = time.perf_counter(), time.process_time()
    with run.context(), marked_stages(run.model, adapter.stage_spec), OpTracer(run.model) as trace:
        run.infer()
    t2, c2 = time.perf_counter(), time.process_time()
    pred = adapter.predict(trace, run.workload, run.preset, None)
    t3 = time.perf_counter()
    joined = join(trace, pred.modules, pred.stages, components=adapter.components(run.model),
                  stage_spec=adapter.stage_spec)
    t4 = time.perf_counter()
    comp = joined.by_component()
    rel = comp["rel_flops_tensor"].abs().max()
    print(f"ocr2_shape_only build_s={t1 - t0:.1f} trace_s={t2 - t1:.1f} predict_s={t3 - t2:.1f} "
          f"join_s={t4 - t3:.1f} total_s={t4 - t0:.1f} cpu_s={time.process_time() - cpu0:.1f} "
          f"trace_cpu_s={c2 - c1:.1f} "
          f"tensor_rel_max={rel:.2e}")


if __name__ == "__main__":
    main()
