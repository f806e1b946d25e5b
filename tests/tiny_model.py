"""A tiny BERT for the tests that are not about model quality.

Two layers, 64 wide, random (seeded) weights, with the real all-MiniLM-L6-v2 tokenizer: the
same architecture family (``model_type: bert``), vocabulary and folder layout as the shipped
pre-trained model, so preprocessing, training, evaluation, packaging, ONNX export and serving
run through the very same job scripts and contract - in seconds instead of minutes. Model
quality is measured by the benchmarks (``model_quality``, ``pipeline_e2e``), and one
integration test still fine-tunes the real MiniLM end to end.

The suite points :envvar:`REVIEWS_BASE_MODEL_DIR` (the pre-trained folder a run starts from
when it names none) at this folder for the whole session (``tests/conftest.py``).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

# Small enough that a training step, an evaluation pass and an int8 ONNX export take well
# under a second; big enough to exercise attention, layer norm and the mean-pooling head.
TINY_CONFIG = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 128,
               "max_position_embeddings": 512}
SEED = 0


def build_tiny_model(dest: Path, tokenizer_dir: str) -> Path:
    """``dest``: a save_pretrained BERT folder (``TINY_CONFIG``, random seeded weights) with the
    tokenizer of ``tokenizer_dir``. Built once; written under a temporary name, then renamed."""
    dest = Path(dest)
    if (dest / "config.json").is_file():
        return dest
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = BertConfig(vocab_size=tokenizer.vocab_size, pad_token_id=tokenizer.pad_token_id, **TINY_CONFIG)
    torch.manual_seed(SEED)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    BertModel(config).save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "TINY_TEST_MODEL.json").write_text(json.dumps({"built_by": __name__, "config": TINY_CONFIG}))
    tmp.rename(dest)
    return dest
