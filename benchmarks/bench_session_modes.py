"""One ONNX Runtime session holding several stitches (ONNX ``If`` on a stitch-id input) vs separate
sessions (issue 11 item 5's candidate): latency, switch-in time and memory, from one run.

    python benchmarks/bench_session_modes.py [--supernet S] [--stitches 0,5,9,21] [--out DIR]

Why: sharing weights across separate ONNX Runtime sessions needs weight prepacking off (Python has
no shared prepacked-weights container; it is C API only), which costs latency. One session whose
graph holds every bundled stitch, each weight stored once as an initializer of the outer graph
and the stitch picked by an int64 input through nested ``If`` nodes, keeps prepacking on; the
question is what it costs in latency, switch time and memory.

Modes (the same exported ONNX graphs, batch 1, spinning off, ORT_ENABLE_ALL):
  separate-shared   one session per stitch, every distinct weight one OrtValue given to all
                    sessions (add_initializer), prepacking off, arena off (the bundle's default)
  separate-private  one session per stitch, prepacking on (each session its own weights)
  one-if-session    one session, nested If on the 'stitch' input, weights once in the outer graph
Latency and switch-in: the one timing protocol (runtime/timing.py: blocks of consecutive calls per
visit, switch-in = first call after switching). Memory: peak RSS (VmHWM) of a fresh process that
loads the mode and runs every stitch once, minus that of a process that only imports the runtime.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEMO = ROOT / "examples" / "demo" / "digits-esta.safetensors"
MODES = ("separate-shared", "separate-private", "one-if-session")


def load_avg() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def build_if_model(graphs: dict[int, "object"], input_name: str = "pixels"):
    """One ModelProto: outer inputs (pixels, stitch:int64 scalar), every distinct initializer once
    in the outer graph, the stitches as nested If branches."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    inits: dict[str, object] = {}
    branches = {}
    out_info = None
    for sid, m in graphs.items():
        g = m.graph
        rename: dict[str, str] = {}
        for t in g.initializer:
            arr = numpy_helper.to_array(t)
            key = "w_" + hashlib.sha256(arr.tobytes() + str(arr.dtype).encode() + str(arr.shape).encode()).hexdigest()[:20]
            rename[t.name] = key
            if key not in inits:
                inits[key] = numpy_helper.from_array(arr, key)
        def name(v: str) -> str:
            if v == "" or v == input_name:
                return v
            return rename.get(v, f"s{sid}/{v}")
        nodes = []
        for n in g.node:
            new = onnx.NodeProto()
            new.CopyFrom(n)
            del new.input[:]
            new.input.extend(name(v) for v in n.input)
            del new.output[:]
            new.output.extend(name(v) for v in n.output)
            if new.name:
                new.name = f"s{sid}/{new.name}"
            nodes.append(new)
        out = g.output[0]
        res = f"s{sid}/result"
        nodes.append(helper.make_node("Identity", [name(out.name)], [res]))
        out_info = out
        vi = onnx.ValueInfoProto()
        vi.CopyFrom(out)
        vi.name = res
        branches[sid] = helper.make_graph(nodes, f"stitch_{sid}", [], [vi])
    ids = list(graphs)

    def chain(rest: list[int]):
        if len(rest) == 1:
            return branches[rest[0]]
        k = rest[0]
        cond, c = f"is_{k}", f"id_{k}"
        sub_out = onnx.ValueInfoProto()
        sub_out.CopyFrom(out_info)
        sub_out.name = f"out_from_{k}"
        nodes = [helper.make_node("Constant", [], [c], value=helper.make_tensor(c, TensorProto.INT64, [], [k])),
                 helper.make_node("Equal", ["stitch", c], [cond]),
                 helper.make_node("If", [cond], [sub_out.name], then_branch=branches[k],
                                  else_branch=chain(rest[1:]))]
        return helper.make_graph(nodes, f"pick_{k}", [], [sub_out])

    top = chain(ids)
    g0 = graphs[ids[0]].graph
    outer_out = onnx.ValueInfoProto()
    outer_out.CopyFrom(out_info)
    outer_out.name = "logits"
    nodes = list(top.node)
    nodes.append(helper.make_node("Identity", [top.output[0].name], ["logits"]))
    graph = helper.make_graph(nodes, "stitches_if", [g0.input[0], helper.make_tensor_value_info(
        "stitch", TensorProto.INT64, [])], [outer_out], list(inits.values()))
    model = helper.make_model(graph, opset_imports=list(graphs[ids[0]].opset_import),
                              ir_version=graphs[ids[0]].ir_version)
    return model, len(inits)


def export_stitches(supernet: Path, ids: list[int], work: Path) -> Path:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = work / "export"
    proc = subprocess.run([sys.executable, "-m", "esta_export", "export", str(supernet), "--out", str(out),
                           "--stitches", ",".join(map(str, ids)), "-q"], capture_output=True, text=True, env=env)
    if proc.returncode:
        sys.exit(f"export failed: {proc.stderr.strip()}")
    return out


def sessions(mode: str, work: Path, ids: list[int]):
    """{id: runner with .infer(x)} for the mode (all loaded, as a bundle keeps them)."""
    import onnxruntime as ort

    from esta_export.runtime.session import SessionSettings, ort_session_options

    summary = json.loads((work / "export" / "export.json").read_text())
    by_id = {s["id"]: s for s in summary["stitches"]}
    name = summary["input"].get("name", "pixels")

    class R:
        def __init__(self, sess, feed_extra=None):
            self.sess, self.extra = sess, feed_extra or {}

        def infer(self, x):
            return self.sess.run(None, {name: x, **self.extra})[0]

    if mode == "one-if-session":
        so = ort_session_options(ort, SessionSettings(share_weights=False))
        sess = ort.InferenceSession(str(work / "if_model.onnx"), so, providers=["CPUExecutionProvider"])
        return {i: R(sess, {"stitch": np.array(i, dtype=np.int64)}) for i in ids}
    settings = SessionSettings(share_weights=(mode == "separate-shared"))
    shared: dict[tuple, object] = {}  # (file, offset) -> one OrtValue for every session
    maps: dict[str, np.memmap] = {}
    out = {}
    for i in ids:
        so = ort_session_options(ort, settings)
        path = work / "export" / by_id[i]["onnx"]
        keep = []
        if settings.share_weights:
            import onnx

            # As the bundle runtime: each weight of the shared store mapped once (read-only
            # mmap), the same OrtValue handed to every session that uses it.
            for t in onnx.load(str(path), load_external_data=False).graph.initializer:
                ext = {e.key: e.value for e in t.external_data}
                if t.data_location != onnx.TensorProto.EXTERNAL or t.data_type != onnx.TensorProto.FLOAT:
                    continue
                key = (ext["location"], int(ext.get("offset", 0)))
                if key not in shared:
                    mm = maps.setdefault(ext["location"], np.memmap(path.parent / ext["location"], np.uint8, "r"))
                    n = int(np.prod(t.dims)) if t.dims else 1
                    arr = np.frombuffer(mm, np.float32, n, key[1]).reshape(tuple(t.dims))
                    shared[key] = ort.OrtValue.ortvalue_from_numpy(arr)
                so.add_initializer(t.name, shared[key])
                keep.append(shared[key])
        r = R(ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]))
        r.keep = (so, keep)
        out[i] = r
    return out


def vm_hwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(mode: str, work: Path, ids: list[int], shape: list[int]) -> None:
    if mode == "baseline":
        import onnxruntime  # noqa: F401
    else:
        x = np.zeros(shape, np.float32)
        for r in sessions(mode, work, ids).values():
            r.infer(x)
    print(json.dumps({"vm_hwm_mb": vm_hwm_mb()}))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--supernet", type=Path, default=DEMO)
    ap.add_argument("--stitches", default=None, help="ids (default: up to 8 spread by FLOPs)")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--seconds", type=float, default=1.0, help="steady-state seconds per stitch")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    work = args.out or Path(tempfile.mkdtemp(prefix="bench-modes-"))
    if args.child:
        cfg = json.loads((work / "modes.json").read_text())
        child(args.child, work, cfg["ids"], cfg["shape"])
        return 0
    import onnx

    from esta_export.runtime.timing import TimingProtocol, profile_runners

    if args.stitches:
        ids = [int(i) for i in args.stitches.split(",")]
    else:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        rows = sorted(json.loads(subprocess.run([sys.executable, "-m", "esta_export", "inspect", str(args.supernet),
                                                 "--json"], capture_output=True, text=True, env=env).stdout)["stitches"],
                      key=lambda s: s["flops"])
        ids = sorted({rows[round(k * (len(rows) - 1) / 7)]["id"] for k in range(8)})
    print(f"bench_session_modes: {args.supernet.name}, stitches {ids}, work {work}; load {load_avg()}")
    export_stitches(args.supernet, ids, work)
    summary = json.loads((work / "export" / "export.json").read_text())
    by_id = {s["id"]: s for s in summary["stitches"]}
    graphs = {i: onnx.load(str(work / "export" / by_id[i]["onnx"]), load_external_data=True) for i in ids}
    model, n_init = build_if_model(graphs, summary["input"].get("name", "pixels"))
    onnx.save(model, str(work / "if_model.onnx"), save_as_external_data=True, location="if_model.data")
    separate = sum(len(g.graph.initializer) for g in graphs.values())
    print(f"   one-if graph: {n_init} distinct initializers (separate graphs hold {separate} in all)")
    shape = [1] + [int(d) for d in summary["input"]["shape"][1:]]
    (work / "modes.json").write_text(json.dumps({"ids": ids, "shape": shape}))
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    # Correctness first: the If graph must give each stitch's own logits.
    ref = sessions("separate-private", work, ids)
    one = sessions("one-if-session", work, ids)
    worst = max(float(np.abs(one[i].infer(x) - ref[i].infer(x)).max()) for i in ids)
    print(f"   one-if vs separate logits: max |diff| {worst:.2e}")
    del ref, one
    proto = TimingProtocol(min_seconds=args.seconds, max_remeasure=1)
    results = {}
    base = json.loads(subprocess.run([sys.executable, __file__, "--out", str(work), "--child", "baseline"],
                                     capture_output=True, text=True).stdout)["vm_hwm_mb"]
    for mode in MODES:
        runners = sessions(mode, work, ids)
        stats = profile_runners(runners, inputs=x, protocol=proto)
        del runners
        mem = json.loads(subprocess.run([sys.executable, __file__, "--out", str(work), "--child", mode],
                                        capture_output=True, text=True).stdout)["vm_hwm_mb"] - base
        results[mode] = {"median_ms": {i: s.median for i, s in stats.items()},
                         "switch_in_ms": {i: (s.switch_in or {}).get("median") for i, s in stats.items()},
                         "peak_rss_mb": mem, "loadavg": os.getloadavg()}
        print(f"   {mode:<17} peak RSS {mem:7.1f} MB above the bare runtime; load {load_avg()}", flush=True)
    print(f"   {'stitch':>6}  " + "  ".join(f"{m:>26}" for m in MODES))
    print(f"   {'':>6}  " + "  ".join(f"{'median / switch-in ms':>26}" for _ in MODES))
    for i in ids:
        print(f"   {i:>6}  " + "  ".join(
            f"{results[m]['median_ms'][i]:12.3f} / {results[m]['switch_in_ms'][i] or float('nan'):11.3f}"
            for m in MODES))
    ref = results["separate-shared"]
    for m in MODES[1:]:
        r = [results[m]["median_ms"][i] / ref["median_ms"][i] for i in ids]
        print(f"   {m} / separate-shared: latency ratio median {np.median(r):.2f} (range {min(r):.2f}-"
              f"{max(r):.2f}); memory ratio {results[m]['peak_rss_mb'] / ref['peak_rss_mb']:.2f}")
    print(f"load average at end {load_avg()}")
    (work / "session_modes.json").write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
