"""The onnxruntime peer for MiniLM embeddings (benches/models.rs): builds an ONNX graph of
all-minilm-l6-v2 (BERT, 6 layers, mean pooling, L2 norm) from the same safetensors file our
runtime loads, checks it against the reference cosine, and times batch-64 embeddings on the same
texts with the same thread count. Nothing is downloaded from a model hub: the weights are the
pulled model's.

    python3 minilm_onnx.py MODEL_DIR TEXTS_JSONL THREADS
"""

import json
import math
import statistics
import struct
import sys
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from tokenizers import Tokenizer

DTYPES = {"F32": np.float32, "I64": np.int64}


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        out[name] = np.frombuffer(data[start:end], dtype=DTYPES[info["dtype"]]).reshape(info["shape"])
    return out


def build_graph(w, config):
    heads = config["num_attention_heads"]
    dim = config["hidden_size"]
    head_dim = dim // heads
    eps = config.get("layer_norm_eps", 1e-12)
    inits, nodes = [], []

    def const(name, value):
        inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(op, inputs, name, **attrs):
        nodes.append(helper.make_node(op, inputs, [name], **attrs))
        return name

    def layer_norm(x, prefix, name):
        return node("LayerNormalization",
                    [x, const(prefix + ".weight", w[prefix + ".weight"]), const(prefix + ".bias", w[prefix + ".bias"])],
                    name, axis=-1, epsilon=eps)

    def dense(x, prefix, name):
        weight = const(prefix + ".weight.T", np.ascontiguousarray(w[prefix + ".weight"].T))
        return node("Add", [node("MatMul", [x, weight], name + ".mm"), const(prefix + ".bias", w[prefix + ".bias"])], name)

    e = "embeddings"
    shape = node("Shape", ["input_ids"], "shape")
    length = node("Gather", [shape, const("one", np.array(1, np.int64))], "length", axis=0)
    positions = node("Range", [const("zero", np.array(0, np.int64)), length, const("step", np.array(1, np.int64))], "positions")
    word = node("Gather", [const("word", w[e + ".word_embeddings.weight"]), "input_ids"], "word_emb")
    pos = node("Gather", [const("pos", w[e + ".position_embeddings.weight"]), positions], "pos_emb")
    summed = node("Add", [node("Add", [word, pos], "wp"), const("type0", w[e + ".token_type_embeddings.weight"][0])], "emb")
    h = layer_norm(summed, e + ".LayerNorm", "h0")

    mask_f = node("Cast", ["attention_mask"], "mask_f", to=TensorProto.FLOAT)
    mask_add = node("Mul", [node("Sub", [const("onef", np.array(1.0, np.float32)), mask_f], "inv_mask"),
                            const("neg", np.array(-10000.0, np.float32))], "mask_add")
    mask_add = node("Unsqueeze", [mask_add, const("axes12", np.array([1, 2], np.int64))], "mask4")
    split = const("split_shape", np.array([0, 0, heads, head_dim], np.int64))
    merge = const("merge_shape", np.array([0, 0, dim], np.int64))
    scale = const("scale", np.array(1.0 / math.sqrt(head_dim), np.float32))
    for i in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{i}"
        def heads_of(kind, perm):
            x = node("Reshape", [dense(h, f"{p}.attention.self.{kind}", f"{p}.{kind}"), split], f"{p}.{kind}.split")
            return node("Transpose", [x], f"{p}.{kind}.t", perm=perm)
        q = heads_of("query", [0, 2, 1, 3])
        k = heads_of("key", [0, 2, 3, 1])
        v = heads_of("value", [0, 2, 1, 3])
        scores = node("Add", [node("Mul", [node("MatMul", [q, k], f"{p}.qk"), scale], f"{p}.scaled"), mask_add], f"{p}.scores")
        probs = node("Softmax", [scores], f"{p}.probs", axis=-1)
        ctx = node("Transpose", [node("MatMul", [probs, v], f"{p}.ctx")], f"{p}.ctx.t", perm=[0, 2, 1, 3])
        ctx = node("Reshape", [ctx, merge], f"{p}.ctx.merged")
        attn = dense(ctx, f"{p}.attention.output.dense", f"{p}.attn_out")
        h1 = layer_norm(node("Add", [attn, h], f"{p}.res1"), f"{p}.attention.output.LayerNorm", f"{p}.h1")
        inner = dense(h1, f"{p}.intermediate.dense", f"{p}.inner")
        # GELU (erf form), as BERT defines it.
        erf = node("Erf", [node("Mul", [inner, const(f"{p}.rsqrt2", np.array(1 / math.sqrt(2), np.float32))], f"{p}.g1")], f"{p}.g2")
        gelu = node("Mul", [node("Mul", [inner, const(f"{p}.half", np.array(0.5, np.float32))], f"{p}.g3"),
                            node("Add", [erf, const(f"{p}.onef", np.array(1.0, np.float32))], f"{p}.g4")], f"{p}.gelu")
        out = dense(gelu, f"{p}.output.dense", f"{p}.out")
        h = layer_norm(node("Add", [out, h1], f"{p}.res2"), f"{p}.output.LayerNorm", f"{p}.h")

    # Mean over real tokens, then L2 normalisation.
    m3 = node("Unsqueeze", [mask_f, const("axis2", np.array([2], np.int64))], "mask3")
    total = node("ReduceSum", [node("Mul", [h, m3], "masked"), const("axis1", np.array([1], np.int64))], "total", keepdims=0)
    count = node("ReduceSum", [m3, const("axis1b", np.array([1], np.int64))], "count", keepdims=0)
    mean = node("Div", [total, node("Max", [count, const("tiny", np.array(1e-9, np.float32))], "count_safe")], "mean")
    node("LpNormalization", [mean], "embeddings", axis=-1, p=2)

    graph = helper.make_graph(
        nodes, "all-minilm-l6-v2",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "tokens"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "tokens"])],
        [helper.make_tensor_value_info("embeddings", TensorProto.FLOAT, ["batch", dim])],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def main():
    model_dir, texts_path, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
    config = json.load(open(f"{model_dir}/config.json"))
    model = build_graph(read_safetensors(f"{model_dir}/model.safetensors"), config)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    tokenizer = Tokenizer.from_file(f"{model_dir}/tokenizer.json")
    tokenizer.enable_padding(pad_id=config.get("pad_token_id", 0))
    tokenizer.enable_truncation(config["max_position_embeddings"])

    def embed(texts):
        enc = tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in enc], np.int64)
        mask = np.array([e.attention_mask for e in enc], np.int64)
        return session.run(None, {"input_ids": ids, "attention_mask": mask})[0]

    a, b = embed(["A man is eating food.", "A man is eating a piece of bread."])
    print(f"onnxruntime MiniLM: cosine check {float(a @ b):.3f} (reference 0.755)")
    texts = [json.loads(line)["text"] for line in open(texts_path)][:64]
    embed(texts)  # warm-up
    runs = []
    for _ in range(5):
        start = time.perf_counter()
        embed(texts)
        runs.append(time.perf_counter() - start)
    print(f"onnxruntime {ort.__version__} MiniLM: embeddings batch 64: {64 / statistics.median(runs):.1f} texts/s "
          f"({threads} threads, median of 5)")


if __name__ == "__main__":
    main()
