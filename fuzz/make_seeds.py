#!/usr/bin/env python3
"""Writes the seed corpora for the cargo-fuzz targets into fuzz/seeds/<target>/.

The committed corpora (fuzz/corpus/<target>/) were grown from these seeds and minimised with
`cargo fuzz cmin`; this script only matters when the corpora are rebuilt from scratch. It needs
Pillow and numpy (`pip install pillow numpy`) for the image and npz seeds.

    python3 fuzz/make_seeds.py && cargo +nightly fuzz run <target> fuzz/corpus/<target> fuzz/seeds/<target>
"""

import io
import json
import struct
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "fuzz" / "seeds"
REF = ROOT / "testdata" / "reference"


def put(target, name, data):
    d = OUT / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data)


# ---------------------------------------------------------------- safetensors_loader

def safetensors(tensors, metadata=None):
    """tensors: list of (name, dtype, shape, bytes)."""
    header, blob = {}, b""
    for name, dtype, shape, data in tensors:
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [len(blob), len(blob) + len(data)]}
        blob += data
    if metadata is not None:
        header["__metadata__"] = metadata
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    return struct.pack("<Q", len(h)) + h + blob


def f32(*shape):
    return np.arange(int(np.prod(shape)), dtype=np.float32).tobytes()


def st_seeds():
    mode0 = lambda b: b"\x00" + b

    def mode1(index, model):
        i = json.dumps(index).encode()
        return b"\x01" + struct.pack("<H", len(i)) + i + model

    small = safetensors([
        ("vision_tower.vision_model.post_layernorm.weight", "F32", [4], f32(4)),
        ("model.language_model.norm.weight", "BF16", [2, 2], bytes(range(8))),
        ("language_model.model.layers.0.mlp.up_proj.weight", "F16", [3, 1], bytes(range(6))),
        ("lm_head.weight", "F32", [1], f32(1)),
    ], metadata={"format": "pt"})
    put("safetensors_loader", "small", mode0(small))
    put("safetensors_loader", "dtypes", mode0(safetensors([
        ("a", "I64", [2], bytes(16)), ("b", "U8", [3], bytes(3)), ("c", "BOOL", [1], b"\x01"),
        ("d", "F64", [1], bytes(8)), ("e", "F32", [], f32(1)), ("f", "F32", [0, 5], b""),
    ])))
    put("safetensors_loader", "empty_header", mode0(safetensors([])))
    put("safetensors_loader", "duplicate_canonical", mode0(safetensors([
        ("model.language_model.norm.weight", "F32", [1], f32(1)),
        ("language_model.norm.weight", "F32", [1], f32(1)),
    ])))
    put("safetensors_loader", "zero_dims", mode0(safetensors([("z", "F32", [0, 7, 9], b""), ("y", "BF16", [1, 0], b"")])))
    put("safetensors_loader", "index", mode1({"metadata": {"total_size": 16}, "weight_map": {"x": "model.safetensors"}}, small))
    put("safetensors_loader", "index_missing_shard", mode1({"weight_map": {"x": "other.safetensors"}}, small))
    put("safetensors_loader", "index_self", mode1({"weight_map": {"x": "model.safetensors.index.json", "y": "model.safetensors"}}, small))
    put("safetensors_loader", "index_bad", mode1({"weight_map": {"x": "../x", "y": 3}}, small))
    # A real checkpoint cut down to its first tensors (the full 620 KB file is also a seed).
    real = (REF / "pg1-tiny-a" / "model.safetensors").read_bytes()
    put("safetensors_loader", "pg1_tiny_full", mode0(real))
    n = struct.unpack("<Q", real[:8])[0]
    header = json.loads(real[8:8 + n])
    header.pop("__metadata__", None)
    picked = sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0])[:12]
    tensors = [(k, v["dtype"], v["shape"], real[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]]) for k, v in picked]
    put("safetensors_loader", "pg1_tiny_head", mode0(safetensors(tensors)))


# ---------------------------------------------------------------- config_parse

def config_seeds():
    for d in sorted(p for p in REF.iterdir() if (p / "config.json").is_file()):
        put("config_parse", f"{d.name}.json", (d / "config.json").read_bytes())
    put("config_parse", "e2e.json", (ROOT / "testdata" / "e2e-caption" / "config.json").read_bytes())
    put("config_parse", "minimal.json", b'{"model_type":"paligemma"}')
    put("config_parse", "gemma2_layer_types.json", json.dumps({
        "model_type": "paligemma",
        "text_config": {"model_type": "gemma2", "num_hidden_layers": 3, "hidden_size": 8, "intermediate_size": 16,
                        "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 4, "vocab_size": 32,
                        "layer_types": ["sliding_attention", "full_attention", "sliding_attention"],
                        "query_pre_attn_scalar": 144, "attn_logit_softcapping": None, "sliding_window": 16,
                        "max_position_embeddings": 64},
        "vision_config": {"hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1,
                          "num_attention_heads": 2, "image_size": 16, "patch_size": 4},
        "image_token_index": 31, "eos_token_id": [1, 7],
    }).encode())
    put("config_parse", "near_limits.json", json.dumps({
        "model_type": "paligemma",
        "text_config": {"num_hidden_layers": 512, "hidden_size": 65536, "intermediate_size": 524288,
                        "num_attention_heads": 1024, "num_key_value_heads": 1024, "head_dim": 65536,
                        "vocab_size": 4194304, "max_position_embeddings": 1048576, "rope_theta": 1e6},
        "vision_config": {"hidden_size": 65536, "intermediate_size": 262144, "num_hidden_layers": 512,
                          "num_attention_heads": 1024, "image_size": 512, "patch_size": 1},
    }).encode())
    put("config_parse", "rope5.json", b'{"model_type":"paligemma","text_config":{"rope_parameters":{"rope_theta":500000.0}},"vision_config":null}')


# ---------------------------------------------------------------- npz_reader

def npy(arr, version=1, fortran=False):
    b = io.BytesIO()
    np.lib.format.write_array(b, np.asfortranarray(arr) if fortran else arr, version=(version, 0), allow_pickle=False)
    return b.getvalue()


def npz(entries, method=zipfile.ZIP_STORED):
    b = io.BytesIO()
    with zipfile.ZipFile(b, "w", method) as z:
        for name, data in entries:
            z.writestr(name, data)
    return b.getvalue()


def npz_seeds():
    a = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    h = np.arange(6, dtype=np.float16).reshape(3, 2)
    v = np.frombuffer(np.arange(4, dtype=np.uint16).tobytes(), dtype="V2")
    entries = [("params/img/a.npy", npy(a)), ("h.npy", npy(h)), ("bf16.npy", npy(v)), ("scalar.npy", npy(np.float32(3.5))),
               ("empty.npy", npy(np.zeros((0, 3), np.float32))), ("notes.txt", b"not an array")]
    put("npz_reader", "stored.npz", npz(entries))
    put("npz_reader", "deflated.npz", npz(entries, zipfile.ZIP_DEFLATED))
    put("npz_reader", "v2_header.npz", npz([("x.npy", npy(a, version=2)), ("y.npy", npy(h, version=3))]))
    put("npz_reader", "fortran.npz", npz([("f.npy", npy(a, fortran=True))]))
    put("npz_reader", "int.npz", npz([("i.npy", npy(np.arange(3, dtype=np.int32)))]))
    put("npz_reader", "lone.npy", npy(a))
    put("npz_reader", "lone_v2.npy", npy(h, version=2))
    put("npz_reader", "empty.npz", npz([]))
    # A few real arrays from the tiny big_vision checkpoint (the whole file is over 600 KB).
    with zipfile.ZipFile(REF / "pg1-tiny-a" / "checkpoint.npz") as z:
        infos = sorted(z.infolist(), key=lambda i: i.file_size)[:8]
        real = [(i.filename, z.read(i)) for i in infos]
    put("npz_reader", "pg1_tiny_subset.npz", npz(real))
    put("npz_reader", "pg1_tiny_subset_deflated.npz", npz(real, zipfile.ZIP_DEFLATED))


# ---------------------------------------------------------------- image_decode

def img_bytes(im, fmt, **kw):
    b = io.BytesIO()
    im.save(b, fmt, **kw)
    return b.getvalue()


def image_seeds():
    rgb = Image.new("RGB", (5, 3))
    rgb.putdata([(i * 40 % 256, i * 90 % 256, i * 13 % 256) for i in range(15)])
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° CW
    seeds = {
        "png_rgb": img_bytes(rgb, "PNG"),
        "png_rgba": img_bytes(rgb.convert("RGBA"), "PNG"),
        "png_gray": img_bytes(rgb.convert("L"), "PNG"),
        "png_la": img_bytes(rgb.convert("LA"), "PNG"),
        "png_palette": img_bytes(rgb.convert("P"), "PNG"),
        "png_16bit": img_bytes(rgb.convert("I;16"), "PNG"),
        "png_optimized": img_bytes(rgb, "PNG", optimize=True),
        "jpeg": img_bytes(rgb, "JPEG", quality=80),
        "jpeg_exif": img_bytes(rgb, "JPEG", exif=exif.tobytes()),
        "jpeg_progressive": img_bytes(rgb, "JPEG", progressive=True),
        "jpeg_gray": img_bytes(rgb.convert("L"), "JPEG"),
        "jpeg_cmyk": img_bytes(rgb.convert("CMYK"), "JPEG"),
        "webp_lossy": img_bytes(rgb, "WEBP", quality=50),
        "webp_lossless": img_bytes(rgb.convert("RGBA"), "WEBP", lossless=True),
        "gif": img_bytes(rgb.convert("P"), "GIF"),
        "bmp": img_bytes(rgb, "BMP"),
        "bmp_gray": img_bytes(rgb.convert("L"), "BMP"),
        "png_exif": img_bytes(rgb, "PNG", exif=exif.tobytes()),
    }
    for name, data in seeds.items():
        put("image_decode", name, b"\x00" + data)
    put("image_decode", "jpeg_exif_apply", b"\x01" + seeds["jpeg_exif"])
    put("image_decode", "tall_gradient", b"\x01" + (ROOT / "testdata/processor/tall_gradient.png").read_bytes())
    put("image_decode", "coffee", b"\x00" + (ROOT / "testdata/processor/coffee.jpg").read_bytes())
    # Raw pixels: width 4, height 2, 3 channels, then 24 bytes (flag bit 1 also fills short data).
    put("image_decode", "raw_rgb", b"\x00" + struct.pack("<HHB", 4, 2, 3) + bytes(range(24)))
    put("image_decode", "raw_rgba_fill", b"\x06" + struct.pack("<HHB", 7, 5, 4) + bytes(range(9)))
    put("image_decode", "raw_gray", b"\x02" + struct.pack("<HHB", 33, 1, 1) + b"\x80")


if __name__ == "__main__":
    st_seeds()
    config_seeds()
    npz_seeds()
    image_seeds()
    for d in sorted(OUT.iterdir()):
        files = list(d.iterdir())
        print(f"{d.name}: {len(files)} seeds, {sum(f.stat().st_size for f in files)} bytes")
