"""Run on the device (an aarch64 Python with ``ai-edge-litert``; it imports nothing of this project):
TFLite models with the runtime's default XNNPACK delegate, outputs kept, latencies interleaved.

    python litert_device.py SPEC.json      # prints the results as one JSON object on stdout

SPEC: ``{"models": {label: path}, "input": "x.npy" (N inputs), "rounds": R, "warmup": W,
"threads": T, "out": dir}``. Each model's outputs on the N inputs go to ``out/<label>.npy``; then R
rounds time one invocation of every model in turn (the same input), so drift on the device (or the
emulator's host) touches all models alike.
"""
import json
import sys
import time


def main(spec_path: str) -> dict:
    import numpy as np
    from ai_edge_litert import interpreter as litert

    with open(spec_path) as f:
        spec = json.load(f)
    x = np.load(spec["input"])
    runners = {}
    for label, path in spec["models"].items():
        runner = litert.Interpreter(model_path=path, num_threads=spec.get("threads", 1))
        runner.allocate_tensors()
        runners[label] = runner
    outputs = {}
    for label, runner in runners.items():
        entry, exit_ = runner.get_input_details()[0]["index"], runner.get_output_details()[0]["index"]
        rows = []
        for sample in x:
            runner.set_tensor(entry, sample[None])
            runner.invoke()
            rows.append(runner.get_tensor(exit_)[0].copy())
        path = f"{spec['out']}/{label}.npy"
        np.save(path, np.stack(rows))
        outputs[label] = path
        runner.set_tensor(entry, x[:1])
        for _ in range(spec.get("warmup", 1)):
            runner.invoke()
    samples = {label: [] for label in runners}
    for _ in range(spec["rounds"]):
        for label, runner in runners.items():
            start = time.perf_counter()
            runner.invoke()
            samples[label].append((time.perf_counter() - start) * 1e3)
    version = getattr(litert, "__version__", None)
    if version is None:
        from importlib import metadata

        version = metadata.version("ai-edge-litert")
    return {"runtime": f"ai-edge-litert {version}", "threads": spec.get("threads", 1),
            "models": {label: {"samples_ms": samples[label], "outputs": outputs[label]} for label in runners}}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1])))
