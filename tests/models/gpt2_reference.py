"""GPT-2 in plain Python torch, on Hugging Face's tensor names: an independent reference for
ds::load_gpt2_safetensors and `ds-ckpt to-fp32 --hf`. safetensors is read and written by hand
(8-byte header length, JSON header, raw little-endian data), so nothing here shares code with
deepspeed.cpp.

  gpt2_reference.py make DIR n_layer n_head d_model vocab positions seed
      DIR/model.safetensors (transformer. prefix, tied lm_head.weight, attn.bias mask buffers,
      as GPT2LMHeadModel.save_pretrained writes them), DIR/config.json, DIR/tokens.bin (int64
      [2, T] with T = positions - 16) and DIR/logits.bin (float32 [2, T, vocab])
  gpt2_reference.py forward DIR T
      reads DIR/model.safetensors (either naming) and DIR/config.json, runs tokens.bin's first T
      columns, writes DIR/logits_check.bin
"""
import json
import math
import struct
import sys

import torch
import torch.nn.functional as F

DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64,
          "BOOL": torch.bool, "U8": torch.uint8}


def write_safetensors(path, tensors):
    header, offset, blobs = {"__metadata__": {"format": "pt"}}, 0, []
    for name, t in tensors.items():
        t = t.contiguous()
        data = t.numpy().tobytes()
        dtype = {v: k for k, v in DTYPES.items()}[t.dtype]
        header[name] = {"dtype": dtype, "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    text = json.dumps(header).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)


def read_safetensors(path):
    with open(path, "rb") as f:
        raw = f.read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        b, end = e["data_offsets"]
        t = torch.frombuffer(bytearray(raw[8 + n + b:8 + n + end]), dtype=DTYPES[e["dtype"]])
        out[name] = t.reshape(e["shape"])
    return out


def forward(w, cfg, tokens):
    w = {k[len("transformer."):] if k.startswith("transformer.") else k: v.float() for k, v in w.items()}
    B, T = tokens.shape
    d, H = cfg["n_embd"], cfg["n_head"]
    hd = d // H
    act = "tanh" if cfg.get("activation_function", "gelu_new") == "gelu_new" else "none"
    x = w["wte.weight"][tokens] + w["wpe.weight"][:T]
    mask = torch.ones(T, T, dtype=torch.bool).triu(1)
    for l in range(cfg["n_layer"]):
        p = "h.%d." % l
        h = F.layer_norm(x, (d,), w[p + "ln_1.weight"], w[p + "ln_1.bias"], 1e-5)
        qkv = h @ w[p + "attn.c_attn.weight"] + w[p + "attn.c_attn.bias"]  # Conv1D: x @ W, W [in, out]
        q, k, v = (t.reshape(B, T, H, hd).transpose(1, 2) for t in qkv.split(d, dim=2))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(hd)
        att = torch.softmax(att.masked_fill(mask, float("-inf")), dim=-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, d)
        x = x + y @ w[p + "attn.c_proj.weight"] + w[p + "attn.c_proj.bias"]
        h = F.layer_norm(x, (d,), w[p + "ln_2.weight"], w[p + "ln_2.bias"], 1e-5)
        m = F.gelu(h @ w[p + "mlp.c_fc.weight"] + w[p + "mlp.c_fc.bias"], approximate=act)
        x = x + m @ w[p + "mlp.c_proj.weight"] + w[p + "mlp.c_proj.bias"]
    x = F.layer_norm(x, (d,), w["ln_f.weight"], w["ln_f.bias"], 1e-5)
    return x @ w["wte.weight"].t()


def make(out, n_layer, n_head, d, vocab, positions, seed):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s, std=0.2: torch.randn(*s, generator=g) * std
    w = {"transformer.wte.weight": r(vocab, d), "transformer.wpe.weight": r(positions, d, std=0.05)}
    for l in range(n_layer):
        p = "transformer.h.%d." % l
        w[p + "ln_1.weight"], w[p + "ln_1.bias"] = 1 + r(d, std=0.1), r(d, std=0.1)
        w[p + "attn.bias"] = torch.ones(positions, positions).tril().reshape(1, 1, positions, positions)
        w[p + "attn.c_attn.weight"], w[p + "attn.c_attn.bias"] = r(d, 3 * d), r(3 * d, std=0.05)
        w[p + "attn.c_proj.weight"], w[p + "attn.c_proj.bias"] = r(d, d), r(d, std=0.05)
        w[p + "ln_2.weight"], w[p + "ln_2.bias"] = 1 + r(d, std=0.1), r(d, std=0.1)
        w[p + "mlp.c_fc.weight"], w[p + "mlp.c_fc.bias"] = r(d, 4 * d), r(4 * d, std=0.05)
        w[p + "mlp.c_proj.weight"], w[p + "mlp.c_proj.bias"] = r(4 * d, d), r(d, std=0.05)
    w["transformer.ln_f.weight"], w["transformer.ln_f.bias"] = 1 + r(d, std=0.1), r(d, std=0.1)
    w["lm_head.weight"] = w["transformer.wte.weight"].clone()
    write_safetensors(out + "/model.safetensors", w)
    cfg = {"model_type": "gpt2", "n_layer": n_layer, "n_head": n_head, "n_embd": d, "vocab_size": vocab,
           "n_positions": positions, "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5}
    with open(out + "/config.json", "w") as f:
        json.dump(cfg, f)
    T = positions - 16
    tokens = torch.randint(0, vocab, (2, T), generator=g)
    with open(out + "/tokens.bin", "wb") as f:
        f.write(tokens.numpy().tobytes())
    with torch.no_grad():
        logits = forward(w, cfg, tokens)
    with open(out + "/logits.bin", "wb") as f:
        f.write(logits.contiguous().numpy().tobytes())


def check(out, T):
    with open(out + "/config.json") as f:
        cfg = json.load(f)
    w = read_safetensors(out + "/model.safetensors")
    with open(out + "/tokens.bin", "rb") as f:
        tokens = torch.frombuffer(bytearray(f.read()), dtype=torch.int64).reshape(2, -1)[:, :T]
    with torch.no_grad():
        logits = forward(w, cfg, tokens)
    with open(out + "/logits_check.bin", "wb") as f:
        f.write(logits.contiguous().numpy().tobytes())


if __name__ == "__main__":
    if sys.argv[1] == "make":
        make(sys.argv[2], *(int(a) for a in sys.argv[3:9]))
    else:
        check(sys.argv[2], int(sys.argv[3]))
