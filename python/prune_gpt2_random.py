"""GPT-2 (randomly initialised: no GPT-2 weights install offline) pruned for language modelling on the
movie-review text, with the MiniLM WordPiece tokenizer. Shows the GPT-2 code path end to end (Conv1D weights,
fused q|k|v, tied LM head); the perplexities of a random model mean little."""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import lm_recipe  # noqa: E402
from minilm import model_path  # noqa: E402


def main(argv=None) -> dict:
    p = lm_recipe.parser(__doc__, "runs/gpt2-random", steps=40, target=0.5)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--heads", type=int, default=8)
    args = p.parse_args(argv)
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tokenizer = AutoTokenizer.from_pretrained(model_path())
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=tokenizer.vocab_size, n_positions=max(128, args.block_size), n_embd=args.hidden,
                        n_layer=args.layers, n_head=args.heads, pad_token_id=tokenizer.pad_token_id)
    return lm_recipe.run(GPT2LMHeadModel(config), tokenizer, args)


if __name__ == "__main__":
    main()
