"""Cross-checks deepspeed.cpp checkpoint files with Python's torch and an independent reader.

usage: check_fp32.py CKPT_DIR OUT_BASE REFERENCE_JSON

1. torch.load(OUT_BASE.pt) is a dict {name: tensor} equal, bit for bit, to the reference.
2. OUT_BASE.safetensors, read with nothing but json + numpy following the format's spec,
   holds the same tensors (and the `safetensors` package agrees, when installed).
3. The checkpoint's own files load in Python: the model states' "module" and the ZeRO
   shards, glued back together per the manifest, give the same weights; the per-tensor
   optimizer scalars ("optimizer_tensor_states") are float64 triples named by parameter.
Exits 77 (skipped) when torch or numpy cannot be imported.
"""
import json
import os
import struct
import sys

try:
    import numpy as np
    import torch
except ImportError as e:
    print(f"SKIP: {e}")
    sys.exit(77)

NP_DTYPES = {"F32": np.float32, "F64": np.float64, "F16": np.float16, "I64": np.int64, "I32": np.int32,
             "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
        print("FAIL:", what)


def reference(path):
    with open(path) as f:
        ref = json.load(f)
    out = {}
    for name, e in ref.items():
        dtype = np.float32 if e["dtype"] == "float32" else np.int64
        values = [float(v) if dtype == np.float32 else int(v) for v in e["values"]]
        out[name] = np.array(values, dtype=dtype).reshape(e["shape"])
    return out


def same(a, b):
    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def read_safetensors(path):
    """An independent reader: 8-byte little-endian header length, JSON header, raw data."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    check((8 + n) % 8 == 0, "safetensors data is 8-byte aligned")
    header = json.loads(data[8:8 + n].decode("utf-8"))
    body = data[8 + n:]
    meta = header.pop("__metadata__", {})
    tensors, end = {}, 0
    for name, e in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
        begin, stop = e["data_offsets"]
        check(begin == end, f"safetensors {name} starts where the previous tensor ends")
        arr = np.frombuffer(body[begin:stop], dtype=np.dtype(NP_DTYPES[e["dtype"]]).newbyteorder("<"))
        tensors[name] = arr.reshape(e["shape"])
        end = stop
    check(end == len(body), "safetensors data has no unused bytes")
    return tensors, meta, list(header.keys())


def main():
    ckpt_dir, out_base, ref_path = sys.argv[1:4]
    ref = reference(ref_path)

    sd = torch.load(out_base + ".pt")
    check(isinstance(sd, dict), f".pt holds a dict, got {type(sd)}")
    check(list(sd.keys()) == list(ref.keys()), f".pt keys in model order: {list(sd.keys())}")
    for name, want in ref.items():
        check(name in sd and same(sd[name].numpy(), want), f".pt tensor {name} equals the reference")
    sd2 = torch.load(out_base + ".pt", weights_only=True) if "weights_only" in torch.load.__code__.co_varnames else sd
    check(set(sd2.keys()) == set(ref.keys()), ".pt loads with weights_only=True")

    tensors, meta, order = read_safetensors(out_base + ".safetensors")
    check(meta.get("format") == "pt", f"safetensors metadata format=pt, got {meta}")
    check(order == list(ref.keys()), f"safetensors header order {order}")
    for name, want in ref.items():
        check(name in tensors and same(tensors[name], want), f"safetensors tensor {name} equals the reference")
    try:
        from safetensors.torch import load_file
    except ImportError:
        load_file = None
    if load_file is not None:
        st = load_file(out_base + ".safetensors")
        for name, want in ref.items():
            check(same(st[name].numpy(), want), f"safetensors package reads {name}")

    latest = open(os.path.join(ckpt_dir, "latest")).read().strip()
    tag_dir = os.path.join(ckpt_dir, latest)
    manifest = json.load(open(os.path.join(tag_dir, "manifest.json")))
    model = torch.load(os.path.join(tag_dir, "mp_rank_00_model_states.pt"))
    check(model["global_steps"] == manifest["engine_state"]["global_steps"], "model states global_steps")
    for name, want in ref.items():
        check(same(model["module"][name].numpy(), want), f"model states module[{name}]")
    # Per-tensor optimizer scalars (1-bit Lamb's), by parameter name: slot i holds (i, 1, 0.5).
    scalars = model["optimizer_tensor_states"]
    slots = [slot["name"] for unit in manifest["units"] for slot in unit["slots"]]
    check(sorted(scalars) == sorted(slots), "optimizer_tensor_states names every parameter")
    for i, name in enumerate(slots):
        got = scalars[name]
        check(got.dtype == torch.float64 and got.tolist() == [float(i), 1.0, 0.5], f"optimizer_tensor_states[{name}]")
    count = manifest["partition"]["count"]
    shards = [torch.load(os.path.join(tag_dir, f"zero_pp_rank_{k}_mp_rank_00_optim_states.pt")) for k in range(count)]
    for unit in manifest["units"]:
        flat = torch.cat([s["fp32"][unit["name"]] for s in shards]).numpy()
        check(flat.shape == (unit["padded_numel"],), f"shards of {unit['name']} add up to padded_numel")
        check(not flat[unit["numel"]:].any(), f"padding of {unit['name']} is zero")
        for slot in unit["slots"]:
            got = flat[slot["offset"]:slot["offset"] + slot["numel"]].reshape(slot["shape"])
            check(same(got, ref[slot["name"]]), f"shards give {slot['name']}")
        for state in manifest["optimizer"]["state_names"]:
            parts = [s["optimizer_state"][state][unit["name"]] for s in shards]
            check(sum(p.numel() for p in parts) == unit["padded_numel"], f"{state} shards of {unit['name']}")

    if failures:
        print(f"{len(failures)} check(s) failed")
        return 1
    print(f"ok: {len(ref)} tensors match in .pt, .safetensors, model states and {count} shards")
    return 0


if __name__ == "__main__":
    sys.exit(main())
