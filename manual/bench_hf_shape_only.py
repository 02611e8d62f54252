"""Shape-only run of a Llama-3-8B-sized transformers model through the generic adapter (not a test).

Writes a ``config.json`` of Llama-3-8B's sizes (hidden 4096, 32 layers, 32 heads with 8 KV heads, intermediate
14336, vocabulary 128256, bf16), then does what ``opmeter report --model hf:PATH --device meta`` does with it:
builds the model on the meta device (full size, no memory), traces the fixed-budget generation (prompt of N tokens,
M new tokens) with ``OpTracer``, and predicts it analytically. Prints one line::

    hf_shape_only model=llama-3-8b-sized prompt=N new=M build_s=.. trace_s=.. predict_s=.. total_s=..
    cpu_s=.. flops_tensor=.. pred_flops_tensor=.. rel=.. worst_component_rel=..

``build_s`` includes resolving the adapter (the model family's import); ``total_s`` is build + trace + predict
wall time (Python start-up and opmeter's imports excluded); ``cpu_s`` the process CPU
time of the same steps, the better figure on a shared machine. Target: well under a minute.

Usage::

    .venv/bin/python manual/bench_hf_shape_only.py [--prompt 512] [--new-tokens 32] [--model-type TYPE]

``--model-type TYPE`` runs ``hf:TYPE`` at its config class defaults instead (e.g. ``deepseek_v3``: 671 B
parameters, 61 layers, 256 routed experts); ``model=`` then names it. The line ends with the largest relative
difference between measured and predicted tensor-core FLOPs over the components (``worst_component_rel``).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from opmeter import OpTracer
from opmeter.join import join
from opmeter.models.base import RunRequest, marked_stages
from opmeter.models.hf.adapter import HFAdapter

LLAMA3_8B = {"model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32,
             "num_key_value_heads": 8, "intermediate_size": 14336, "vocab_size": 128256, "rope_theta": 500000.0,
             "max_position_embeddings": 8192, "torch_dtype": "bfloat16"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompt", type=int, default=512)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--model-type", help="hf:TYPE at its config class defaults instead of the Llama-3-8B sizes")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.json"
        path.write_text(json.dumps(LLAMA3_8B))
        arg = args.model_type or str(path)
        wall, cpu = time.perf_counter(), time.process_time()
        adapter = HFAdapter(arg, f"hf:{arg}")
        run = adapter.prepare(RunRequest(preset="full", workload=f"prompt-{args.prompt}", device="meta",
                                         decode_tokens=args.new_tokens))
        built = time.perf_counter()
        with run.context(), OpTracer(run.model, metadata=run.metadata) as trace, \
                marked_stages(run.model, adapter.stage_spec):
            run.infer()
        traced = time.perf_counter()
        prediction = adapter.predict(trace, run.workload, run.preset, None)
        done, cpu_s = time.perf_counter(), time.process_time() - cpu
    assert prediction is not None
    measured = float(trace.totals()["flops_tensor"])
    predicted = float(prediction.stages.set_index("stage").at["total", "flops_tensor"])
    comps = join(trace, prediction.modules, prediction.stages, components=adapter.components(run.model),
                 stage_spec=adapter.stage_spec).by_component()
    worst = float(comps[comps["flops_tensor"] > 0]["rel_flops_tensor"].abs().max())
    print(f"hf_shape_only model={args.model_type or 'llama-3-8b-sized'} prompt={args.prompt} new={args.new_tokens} "
          f"build_s={built - wall:.1f} trace_s={traced - built:.1f} predict_s={done - traced:.1f} "
          f"total_s={done - wall:.1f} cpu_s={cpu_s:.1f} flops_tensor={measured:.4e} pred_flops_tensor={predicted:.4e} "
          f"rel={(measured - predicted) / predicted:+.2e} worst_component_rel={worst:.1e}")


if __name__ == "__main__":
    main()
