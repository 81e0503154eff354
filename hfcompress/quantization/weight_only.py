"""Weight-only int4/int8 quantization of an ONNX graph's MatMuls with ONNX Runtime's ``MatMulNBitsQuantizer``.

Each MatMul whose second input is a constant weight becomes a ``MatMulNBits`` node holding the weight
in blocks of ``block_size`` values with one scale (and, asymmetric, one zero point) each; activations
stay float and ``accuracy_level`` picks the kernel's compute type. The algorithms are ONNX Runtime's:
round to nearest (its ``DEFAULT`` quantizer), HQQ (no data) and GPTQ (calibrated on training text,
:class:`SequenceReader`). The output layer gets its own setting (llama.cpp keeps it in 8 bits or more),
and the embedding table can go to 4 bits through ``GatherBlockQuantized`` (``quantize_embeddings_4bit``).
HQQ's float zero points are rounded to uint4 with the exact remainder added back (:func:`integer_zero_points`),
so its nodes run MatMulNBits' fast integer kernel.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import numpy as np

from ..data import TaskData
from ..errors import ConfigError, DataError
from .config import PTQConfig, WeightOnlyConfig

logger = logging.getLogger("hfcompress")


def constant_weight(name: str, initializers: dict, producer: dict):
    """The initializer a MatMul's weight input comes from, directly or through one Transpose (a tied output layer), or None."""
    if name in initializers:
        return initializers[name]
    node = producer.get(name)
    if node is not None and node.op_type == "Transpose" and node.input[0] in initializers:
        return initializers[node.input[0]]
    return None


def weight_matmuls(graph) -> list:
    """The MatMul nodes that compute a layer (their weight is a constant), in graph order."""
    initializers = {t.name: t for t in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    return [n for n in graph.node if n.op_type == "MatMul" and constant_weight(n.input[1], initializers, producer) is not None]


def output_matmul(graph) -> Optional[str]:
    """The name of the weight MatMul that writes the graph's first output (the logits), or None."""
    matmuls = {out: node for node in weight_matmuls(graph) for out in node.output}
    node = matmuls.get(graph.output[0].name)
    return node.name if node is not None else None


def untie_weight(graph, node_name: str) -> bool:
    """Give the MatMul ``node_name`` its own transposed copy of a weight it reads through a Transpose (a tied lm_head).

    MatMulNBits quantizes constant weights only; the tied table itself stays for the embedding Gather.
    Returns whether the node was rewired.
    """
    from onnx import numpy_helper

    initializers = {t.name: t for t in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    node = next(n for n in graph.node if n.name == node_name)
    transpose = producer.get(node.input[1])
    if node.input[1] in initializers or transpose is None:
        return False
    table = numpy_helper.to_array(initializers[transpose.input[0]])
    perm = next((list(a.ints) for a in transpose.attribute if a.name == "perm"), None)
    copy = numpy_helper.from_array(np.ascontiguousarray(table.transpose(perm)), name=f"{transpose.input[0]}.transposed")
    graph.initializer.append(copy)
    node.input[1] = copy.name
    if not any(transpose.output[0] in n.input for n in graph.node):
        graph.node.remove(transpose)
    return True


class SequenceReader:
    """An ONNX Runtime CalibrationDataReader over fixed-length token sequences, fed as every input of the graph.

    ``input_ids``, ``attention_mask`` and ``position_ids`` (and any input the task derives) come from
    the task; a decoder with past gets empty ``past_key_values.*`` (past length 0), so the pass is a
    prefill. Built from the graph's own inputs, it feeds graphs with and without a KV cache.
    """

    def __init__(self, sequences: list[np.ndarray], onnx_model, task, model_config):
        from ..export.decoder import empty_graph_past

        inputs = list(onnx_model.graph.input)
        empty_past = empty_graph_past(inputs, model_config)
        token_inputs = [i.name for i in inputs if i.name not in empty_past]
        self.feeds = []
        for ids in sequences:
            encoding = {"input_ids": ids[None], "attention_mask": np.ones_like(ids)[None]}  # past length 0: the mask covers the sequence
            self.feeds.append({**task.onnx_feeds(encoding, token_inputs), **empty_past})
        self.position = 0

    def get_next(self) -> Optional[dict]:
        if self.position >= len(self.feeds):
            return None
        self.position += 1
        return self.feeds[self.position - 1]

    def __iter__(self):  # ONNX Runtime's GPTQ iterates a deep copy of the reader
        return iter(self.feeds)

    def __len__(self) -> int:
        return len(self.feeds)


def calibration_sequences(data: TaskData, tokenizer, config: PTQConfig, seed: int) -> list[np.ndarray]:
    """``config.calibration_samples`` sequences of ``calibration_sequence_length`` tokens from a seeded shuffle of the calibration split.

    Rows are tokenized by the task, joined with the end-of-sequence token and cut into equal lengths,
    as GPTQ calibrates on windows of running text; short sentences (SST-2) fill a window several at a time.
    """
    split = config.calibration_split or data.cfg.train_split
    if split not in data.raw:
        raise DataError(f"calibration split '{split}' is not loaded (splits: {sorted(data.raw)}): set calibration_split to one of them")
    length, wanted = config.weight_only.calibration_sequence_length, config.calibration_samples
    rows = data.raw[split].shuffle(seed=seed)
    data.task.prepare_tokenizer(tokenizer)
    separator = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    tokens: list[int] = []
    for start in range(0, len(rows), 256):  # tokenize only as many rows as the sequences need
        for ids in data.task.tokenize_rows(rows.select(range(start, min(start + 256, len(rows)))), tokenizer, data.cfg)["input_ids"]:
            tokens += list(ids) + separator
        if len(tokens) >= length * wanted:
            break
    count = min(wanted, len(tokens) // length)
    if count == 0:
        raise DataError(f"calibration split '{split}' has {len(tokens)} tokens, fewer than one sequence of {length}: lower weight_only.calibration_sequence_length")
    if count < wanted:
        logger.warning("hfcompress: calibration split '%s' fills %d sequences of %d tokens, not %d", split, count, length, wanted)
    return [np.asarray(tokens[i * length : (i + 1) * length], dtype=np.int64) for i in range(count)]


def group_grid(rows: np.ndarray, maxq: int, symmetric: bool) -> tuple[np.ndarray, np.ndarray]:
    """Scale and zero point per output column of one block of weight rows, as ONNX Runtime's ``quant_tensor`` computes them (unsigned codes)."""
    low, high = rows.min(axis=0), rows.max(axis=0)
    if symmetric:
        largest = np.maximum(np.abs(low), np.abs(high))
        return np.where(largest > 0, 2.0 * largest / maxq, 1.0), np.full(low.shape, (maxq + 1) // 2)
    scale = np.where(high > low, (high - low) / maxq, 1.0)
    return scale, np.clip(np.round(-low / scale), 0, maxq)


def gptq_fake_quantize(W, H, num_bits=4, group_size=32, scheme="asym", percdamp=0.01, **_) -> np.ndarray:
    """GPTQ (Frantar et al., 2022) of one weight ``W`` [inputs, outputs] with input Hessian ``H``: the dequantized weights.

    Input rows are rounded one at a time, each row's rounding error spread over the rows not yet
    rounded through the upper Cholesky factor of H⁻¹; each block of ``group_size`` rows gets its grid
    when its first row is reached. It replaces ONNX Runtime's port (``neural_compressor.weight_only.gptq``,
    1.32), which takes the factor's column below the diagonal, all zeros, so it spreads no error and
    returns round-to-nearest weights.
    """
    W = W.astype(np.float64, copy=True)
    H = H.astype(np.float64, copy=True)
    dead = np.diag(H) == 0  # inputs that were always zero: their weights do not matter
    H[dead, dead] = 1
    W[dead, :] = 0
    H[np.diag_indices_from(H)] += percdamp * np.mean(np.diag(H))
    factor = np.linalg.cholesky(np.linalg.inv(H)).T
    maxq = 2**num_bits - 1
    Q = np.zeros_like(W)
    rows = max(128, group_size)  # rows updated together: the rest of W takes their errors at once, as one matmul
    for start in range(0, W.shape[0], rows):
        end = min(start + rows, W.shape[0])
        block, errors, inverse = W[start:end], np.zeros((end - start, W.shape[1])), factor[start:end, start:end]
        for j in range(end - start):
            if (start + j) % group_size == 0:  # a group never crosses a block: rows is a multiple of group_size
                scale, zero = group_grid(block[j : j + group_size], maxq, scheme == "sym")
            Q[start + j] = scale * (np.clip(np.round(block[j] / scale) + zero, 0, maxq) - zero)
            errors[j] = (block[j] - Q[start + j]) / inverse[j, j]
            block[j + 1 :] -= np.outer(inverse[j, j + 1 :], errors[j])
        W[end:] -= factor[start:end, end:].T @ errors
    return Q.astype(np.float32)


def quantize_matmuls(model, config: WeightOnlyConfig, exclude: list[str], reader: Optional[SequenceReader] = None):
    """One pass of ``config``'s algorithm over the weight MatMuls of ``model`` except ``exclude``; returns the rewritten ModelProto.

    GPTQ goes through ONNX Runtime's Intel Neural Compressor port directly, as MatMulNBitsQuantizer's GPTQ path
    drops its ``nodes_to_exclude``, with :func:`gptq_fake_quantize` in place of the port's per-layer update.
    """
    from onnxruntime.quantization import matmul_nbits_quantizer as nbits

    if config.algorithm == "gptq":
        from unittest import mock

        from onnxruntime.quantization.neural_compressor import weight_only as inc

        with mock.patch.object(inc, "gptq", gptq_fake_quantize):  # ONNX Runtime collects the Hessians and packs the weights
            return inc.gptq_quantize(
                model, ((feeds, None) for feeds in reader), weight_config={name: "fp32" for name in exclude},
                num_bits=config.bits, group_size=config.block_size, scheme="sym" if config.symmetric else "asym", n_samples=-1,
            ).model
    if config.algorithm == "hqq":
        algorithm = nbits.HQQWeightOnlyQuantConfig(block_size=config.block_size, bits=config.bits)
    else:
        algorithm = nbits.DefaultWeightOnlyQuantConfig(block_size=config.block_size, is_symmetric=config.symmetric, bits=config.bits)
    quantizer = nbits.MatMulNBitsQuantizer(model, nodes_to_exclude=exclude, algo_config=algorithm)
    quantizer.process()
    return quantizer.model.model


def set_accuracy_level(model, level: int) -> None:
    """Write ``accuracy_level`` into every MatMulNBits node (ONNX Runtime's HQQ writes none); 0 means the attribute is left out."""
    import onnx

    for node in model.graph.node:
        if node.op_type != "MatMulNBits":
            continue
        kept = [a for a in node.attribute if a.name != "accuracy_level"]
        del node.attribute[:]
        node.attribute.extend(kept + ([onnx.helper.make_attribute("accuracy_level", level)] if level else []))


def _pack_uint4_rows(codes: np.ndarray) -> np.ndarray:
    """MatMulNBits' 4-bit zero points: each row of ``codes`` [N, blocks] packed two per byte, the even block in the low nibble, rows padded to whole bytes."""
    if codes.shape[1] % 2:
        codes = np.pad(codes, ((0, 0), (0, 1)))
    return (codes[:, 0::2] | (codes[:, 1::2] << 4)).astype(np.uint8).reshape(-1)


def _block_indicator(k: int, block_size: int, dtype):
    """A Constant node holding the 0/1 matrix [K, blocks] whose product with x [..., K] sums x over each block of ``block_size``.

    A MatMul rather than Reshape + ReduceSum: it takes any input rank and opset, and a last block cut short by K.
    A Constant node rather than an initializer: it is structure, not a weight (footprints count neither parameters
    nor sparsity in it).
    """
    from onnx import helper, numpy_helper

    name = f"block_sums.indicator_{k}x{block_size}"
    blocks = np.arange(k)[:, None] // block_size == np.arange(-(-k // block_size))[None]
    return helper.make_node("Constant", [], [name], name=f"{name}/constant", value=numpy_helper.from_array(blocks.astype(dtype), name))


def integer_zero_points(model) -> dict:
    """Give every 4-bit MatMulNBits with float zero points (HQQ's) uint8 ones, adding back the exact difference as a small float MatMul.

    ONNX Runtime's fast MatMulNBits kernels (accuracy_level 4 computes in int8) need integer zero points; with
    float ones the node runs a slow fallback. A weight dequantizes as ``s * (q - zp)`` = ``s * (q - zi) + s * (zi - zp)``
    with ``zi = clip(round(zp), 0, 15)``, so ``x @ W`` = ``MatMulNBits(x; q, s, zi) + block_sums(x) @ C`` with
    ``C[b, n] = s[n, b] * (zi[n, b] - zp[n, b])`` ([K / block_size, N]) and ``block_sums(x)`` the sums of x over each
    block of K. The identity holds for any ``zi``: rounding keeps |zi - zp| <= 0.5 (C small), and a block whose zp
    lies outside [0, 15] is clipped and still exact, C carrying the whole remainder. MatMuls reading the same input
    (q/k/v, gate/up) share one block sum. Modifies ``model`` in place; returns what was done.
    """
    from onnx import TensorProto, helper, numpy_helper

    initializers = {t.name: t for t in model.graph.initializer}
    rewritten, clipped, nodes, block_sums, indicators = 0, 0, [], {}, {}
    for node in model.graph.node:
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        zero_points = initializers.get(node.input[3]) if node.op_type == "MatMulNBits" and len(node.input) > 3 and node.input[3] else None
        if zero_points is None or zero_points.data_type == TensorProto.UINT8 or attributes.get("bits", 4) != 4:
            nodes.append(node)  # integer zero points already (rtn, gptq, the int8 output layer)
            continue
        k, n, block_size = attributes["K"], attributes["N"], attributes["block_size"]
        blocks = -(-k // block_size)
        scales = numpy_helper.to_array(initializers[node.input[2]]).reshape(n, blocks)
        zp = numpy_helper.to_array(zero_points).reshape(n, blocks)
        rounded = np.clip(np.round(zp), 0, 15)
        clipped += int(np.count_nonzero(np.abs(rounded - zp) > 0.5))
        model.graph.initializer.remove(zero_points)
        model.graph.initializer.append(numpy_helper.from_array(_pack_uint4_rows(rounded.astype(np.uint8)), zero_points.name))
        correction = f"{node.name}.zero_point_correction"
        model.graph.initializer.append(numpy_helper.from_array((scales * (rounded - zp)).T.astype(scales.dtype), f"{correction}.weight"))
        source = node.input[0]
        if (k, block_size) not in indicators:  # one per (K, block size), shared by every input of that width
            indicators[k, block_size] = _block_indicator(k, block_size, scales.dtype)
            nodes.append(indicators[k, block_size])
        if (source, block_size) not in block_sums:
            block_sums[source, block_size] = f"{source}.block_sums{block_size}"
            nodes.append(helper.make_node("MatMul", [source, indicators[k, block_size].output[0]], [block_sums[source, block_size]],
                                          name=f"{block_sums[source, block_size]}/matmul"))
        output = node.output[0]
        node.output[0] = f"{output}.integer_zero_points"
        nodes += [node,
                  helper.make_node("MatMul", [block_sums[source, block_size], f"{correction}.weight"], [correction], name=f"{correction}/matmul"),
                  helper.make_node("Add", [node.output[0], correction], [output], name=f"{correction}/add")]
        rewritten += 1
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return {"nodes": rewritten, "shared_block_sums": len(block_sums), "blocks_clipped": clipped}


def quantize_weight_only(onnx_file: Path, quantized: Path, config: PTQConfig, data: Optional[TaskData], tokenizer, model_config, seed: int) -> dict:
    """Write ``onnx_file`` with int4/int8 MatMulNBits weights to ``quantized``; returns what quantization.json records."""
    import onnx

    from .onnx_ptq import quantize_embeddings_4bit

    settings = config.weight_only
    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)  # it logs every node at INFO
    model = onnx.load(str(onnx_file))
    matmuls = [n.name for n in weight_matmuls(model.graph)]
    if not matmuls:
        raise ConfigError(f"mode weight_only quantizes MatMul weights and {onnx_file.name} has none (a CNN keeps its weights in Conv): use mode: static")
    unknown = sorted(set(config.exclude_nodes) - set(matmuls))
    if unknown:
        raise ConfigError(f"exclude_nodes {unknown} name no weight MatMul of {onnx_file.name}: use names from its graph, e.g. {matmuls[0]!r}")
    output_layer = output_matmul(model.graph)
    reader = calibration = None
    if settings.algorithm == "gptq":
        if data is None:
            raise ConfigError("weight_only gptq calibrates on text: give the recipe data (or data=TaskData(...)), or use algorithm rtn or hqq")
        reader = SequenceReader(calibration_sequences(data, tokenizer, config, seed), model, data.task, model_config)
        calibration = {"split": config.calibration_split or data.cfg.train_split, "seed": seed, "sequences": len(reader),
                       "sequence_length": settings.calibration_sequence_length}
    if output_layer is not None and settings.output_layer != "fp32":
        untie_weight(model.graph, output_layer)
    separate_output = output_layer is not None and settings.output_layer != "same"
    model = quantize_matmuls(model, settings, list(config.exclude_nodes) + ([output_layer] if separate_output else []), reader)
    if separate_output and settings.output_layer == "int8" and output_layer not in config.exclude_nodes:
        eight_bit = WeightOnlyConfig(bits=8, block_size=settings.block_size, symmetric=settings.symmetric)
        model = quantize_matmuls(model, eight_bit, [n for n in matmuls if n != output_layer])
    kept = [n.name for n in weight_matmuls(model.graph)]  # before the zero-point rewrite adds its small float MatMuls
    rounded = integer_zero_points(model) if settings.algorithm == "hqq" and settings.integer_zero_points else None
    set_accuracy_level(model, settings.accuracy_level)
    onnx.save(model, str(quantized))
    embeddings = quantize_embeddings_4bit(quantized, config.embedding_block_size) if config.quantize_embeddings else 0
    return {
        "method": "weight_only",
        **settings.describe(),
        "algorithm": settings.algorithm,
        "bits": settings.bits,
        "block_size": settings.block_size,
        "symmetric": settings.algorithm != "hqq" and settings.symmetric,
        "accuracy_level": settings.accuracy_level,
        "output_layer": {"node": output_layer, "weights": "fp32" if output_layer in kept else settings.output_layer.replace("same", f"int{settings.bits}")} if output_layer else None,
        "embeddings_quantized": config.quantize_embeddings,
        **({"embedding_bits": 4, "embedding_block_size": config.embedding_block_size, "embedding_tables_quantized": embeddings} if config.quantize_embeddings else {}),
        "calibration": calibration,
        "integer_zero_points": settings.algorithm != "hqq" or settings.integer_zero_points,
        "zero_point_corrections": rounded,
        "matmuls_quantized": len(matmuls) - len(kept),
        "matmuls_kept": kept,
        "quantizer": "onnxruntime.quantization.neural_compressor.gptq_quantize with hfcompress' GPTQ update" if settings.algorithm == "gptq"
        else f"onnxruntime.quantization.matmul_nbits_quantizer.MatMulNBitsQuantizer ({'HQQ' if settings.algorithm == 'hqq' else 'DEFAULT'})",
    }
