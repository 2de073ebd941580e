"""Which optional part of tinykd a missing module belongs to: a missing extra is one line naming what to install.

The core (`pip install tinykd`) distils and trains vision models and writes their reports; the extras add:
`edge` (ONNX export, ONNX Runtime, quantization, pruning), `text` (Hugging Face models, tokenizers, datasets,
generation metrics), `qat` (torchao quantization-aware training), `trackers` (TensorBoard), `executorch` (.pte
files), `detection` (pycocotools, COCO's mAP); `all` is all of them. `litert` (.tflite files) stands apart: its
converter pins an older typing-extensions than pydantic's.
`xla` (torch_xla, for TPUs) stands apart: it must match torch's version exactly.
Every import of an optional package in tinykd is inside the function that needs it, so the core never loads one.
"""

from __future__ import annotations

EXTRA_OF = {
    "onnx": "edge", "onnxruntime": "edge", "onnxscript": "edge", "torch_pruning": "edge",
    "transformers": "text", "tokenizers": "text", "datasets": "text", "rouge_score": "text",
    "torchao": "qat", "tensorboard": "trackers", "executorch": "executorch", "pycocotools": "detection",
    "litert_torch": "litert", "ai_edge_litert": "litert", "ai_edge_quantizer": "litert",
}  # fmt: skip


def missing_extra(exc: ModuleNotFoundError) -> str | None:
    """The one line for a module of an extra that is not installed, or None for any other missing module."""
    top = (exc.name or "").split(".")[0]
    if top == "torch_xla":
        return ("runtime.device: xla needs torch_xla at your torch's exact version: pip install 'tinykd[xla]' "
                "torch==2.9.0 torch_xla==2.9.0 (see docs/tpu.md)")  # fmt: skip
    extra = EXTRA_OF.get(top)
    if extra is None:
        return None
    return f"this needs the Python package '{top}', part of tinykd's '{extra}' extra: pip install 'tinykd[{extra}]'"
