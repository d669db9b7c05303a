"""Deep Compression for the model builder: pruning, weight sharing, int8, and a deployable encoding.

``compress_run`` turns a training run into a compressed run (see :mod:`.pipeline`); the pieces are
usable alone: per-layer magnitude masks (:mod:`.prune`), k-means codebooks with centroid
fine-tuning (:mod:`.share`), the index-encoded ONNX graph that stock ONNX Runtime folds back into
float weights at load (:mod:`.encode`), ONNX Runtime static int8 quantization (:mod:`.quantize`)
and the measurements of what a compressed artifact achieved (:mod:`.report`).
"""

from model_builder.compress.config import METHODS, CompressConfig, CompressResult
from model_builder.compress.encode import decoded_weights, encode_onnx, index_streams
from model_builder.compress.finetune import calibration_images, evaluate_onnx
from model_builder.compress.pipeline import compress_run
from model_builder.compress.prune import attach_masks, conv_layers, detach, geometric_schedule, magnitude_masks
from model_builder.compress.quantize import quantize_int8
from model_builder.compress.report import format_report, layer_stats, order0_bits, ort_timing, stream_report
from model_builder.compress.share import LayerCode, attach_codes, kmeans_1d, read_codes, round_to_half, share_weights
from model_builder.errors import CompressError, QuantizeError

__all__ = [
    "METHODS",
    "CompressConfig",
    "CompressError",
    "CompressResult",
    "LayerCode",
    "QuantizeError",
    "attach_codes",
    "attach_masks",
    "calibration_images",
    "compress_run",
    "conv_layers",
    "decoded_weights",
    "detach",
    "encode_onnx",
    "evaluate_onnx",
    "format_report",
    "geometric_schedule",
    "index_streams",
    "kmeans_1d",
    "layer_stats",
    "magnitude_masks",
    "order0_bits",
    "ort_timing",
    "quantize_int8",
    "read_codes",
    "round_to_half",
    "share_weights",
    "stream_report",
]
