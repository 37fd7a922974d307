"""Random tiny Hugging Face models of each family, written to disk with transformers (torch CPU)."""

import torch
import transformers

COMMON = dict(
    vocab_size=96,
    hidden_size=64,
    intermediate_size=112,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=256,
    rms_norm_eps=1e-6,
)

FAMILIES = {
    "llama": lambda: transformers.LlamaConfig(
        **COMMON,
        rope_theta=500000.0,
        tie_word_embeddings=False,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        },
    ),
    "qwen2": lambda: transformers.Qwen2Config(**COMMON, rope_theta=1000000.0, tie_word_embeddings=True),
    "qwen3": lambda: transformers.Qwen3Config(**COMMON, rope_theta=1000000.0, tie_word_embeddings=True),
}


def make_hf_model(family: str, seed: int = 0):
    torch.manual_seed(seed)
    config = FAMILIES[family]()
    config._attn_implementation = "eager"
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager").float().eval()
    with torch.no_grad():  # the default init leaves norms at 1 and biases at 0: perturb them so they are tested
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith(".bias"):
                p.add_(0.1 * torch.randn_like(p))
    return model


def save_hf_model(family: str, path, seed: int = 0):
    model = make_hf_model(family, seed)
    model.save_pretrained(path, safe_serialization=True)
    return model


def ragged_batch(vocab: int, lengths=(9, 5, 12, 1), seed: int = 0):
    """Left-padded token ids, attention mask and positions for prompts of the given lengths."""
    g = torch.Generator().manual_seed(seed)
    T = max(lengths)
    ids = torch.zeros(len(lengths), T, dtype=torch.long)
    mask = torch.zeros(len(lengths), T, dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, T - n :] = torch.randint(1, vocab, (n,), generator=g)
        mask[i, T - n :] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids, mask, positions


def hf_logits(model, ids, mask, positions):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, position_ids=positions).logits.float().numpy()
