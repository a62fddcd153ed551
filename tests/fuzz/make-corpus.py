#!/usr/bin/env python3
"""Writes the kept seed corpus of the fuzz targets (corpus/<target>/<name>): valid files and the
hostile shapes the parsers must refuse. Run again after changing it; the files are committed."""
import json
import os
import struct

here = os.path.dirname(os.path.abspath(__file__))


def put(target, name, data):
    d = os.path.join(here, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def st(header, data=b"", length=None):
    """A safetensors file: length prefix (the real one unless `length` lies), header, data."""
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(text) if length is None else length) + text + data


H = "safetensors_header_fuzz"
put(H, "valid-two-tensors", st({"__metadata__": {"format": "pt"},
                                "a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
                                "b": {"dtype": "BF16", "shape": [3], "data_offsets": [16, 22]}}, bytes(22)))
put(H, "valid-every-dtype", st({f"t{i}": {"dtype": d, "shape": [1], "data_offsets": [8 * i, 8 * i + s]}
                                for i, (d, s) in enumerate([("F64", 8), ("F32", 4), ("F16", 2), ("BF16", 2),
                                                            ("I64", 8), ("I32", 4), ("I16", 2), ("I8", 1),
                                                            ("U8", 1), ("BOOL", 1)])}, bytes(80)))
put(H, "valid-empty", st({}))
put(H, "valid-zero-dim", st({"e": {"dtype": "F32", "shape": [0, 4], "data_offsets": [0, 0]},
                             "s": {"dtype": "I64", "shape": [], "data_offsets": [0, 8]}}, bytes(8)))
put(H, "zero-dim-after-huge", st({"e": {"dtype": "U8", "shape": [2**62, 2**62, 0], "data_offsets": [0, 0]}}))
put(H, "offsets-past-end", st({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, bytes(8)))
put(H, "overlapping", st({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                          "b": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}, bytes(16)))
put(H, "huge-declared-size", st({"a": {"dtype": "F32", "shape": [2**31, 2**31],
                                       "data_offsets": [0, 2**64 - 1]}}, bytes(16)))
put(H, "shape-overflow", st({"a": {"dtype": "F64", "shape": [2**40, 2**40], "data_offsets": [0, 0]}}))
put(H, "begin-after-end", st({"a": {"dtype": "U8", "shape": [0], "data_offsets": [9, 1]}}, bytes(16)))
put(H, "unknown-dtype", st({"a": {"dtype": "F8_E4M3", "shape": [1], "data_offsets": [0, 1]}}, bytes(1)))
put(H, "negative-dim", st({"a": {"dtype": "F32", "shape": [-1, 4], "data_offsets": [0, 16]}}, bytes(16)))
put(H, "metadata-not-strings", st({"__metadata__": {"n": 5}}))
put(H, "not-an-object", st([1, 2, 3]))
put(H, "not-json", st(b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]', bytes(4)))
put(H, "length-huge", st({}, length=2**40))
put(H, "length-past-file", st({}, length=4096))
put(H, "length-max-u64", st({}, length=2**64 - 1))
put(H, "too-short", b"\x02\x00\x00")
# Deep nesting where the parser reports the value it refused: messages must not recurse that deep.
put(H, "deep-shape", st(b'{"a": {"dtype": "F32", "shape": ' + b"[" * 30000 + b"]" * 30000 + b', "data_offsets": [0, 0]}}'))
put(H, "deep-entry", st(b'{"a": ' + b"[" * 30000 + b"]" * 30000 + b"}"))

I = "checkpoint_index_fuzz"
put(I, "valid", json.dumps({"metadata": {"total_size": 64}, "weight_map": {
    "model.embed_tokens.weight": "model-00001-of-00002.safetensors",
    "model.layers.0.self_attn.q_proj.weight": "model-00001-of-00002.safetensors",
    "lm_head.weight": "model-00002-of-00002.safetensors"}}))
put(I, "valid-empty-map", json.dumps({"weight_map": {}}))
put(I, "parent-dir", json.dumps({"weight_map": {"a": "../model.safetensors"}}))
put(I, "absolute", json.dumps({"weight_map": {"a": "/etc/passwd"}}))
put(I, "dot", json.dumps({"weight_map": {"a": "."}}))
put(I, "empty-name", json.dumps({"weight_map": {"a": ""}}))
put(I, "nul-in-name", json.dumps({"weight_map": {"a": "model\u0000.safetensors"}}))
put(I, "number-value", json.dumps({"weight_map": {"a": 3}}))
put(I, "no-weight-map", json.dumps({"metadata": {}}))
put(I, "weight-map-array", json.dumps({"weight_map": ["a", "b"]}))
put(I, "top-level-array", json.dumps([{"weight_map": {}}]))
put(I, "not-json", '{"weight_map": {"a": "model.safetensors"')
put(I, "deep-value", b'{"weight_map": {"a": ' + b"[" * 30000 + b"]" * 30000 + b"}}")
