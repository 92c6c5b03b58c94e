"""Make a tiny random Llama that vLLM serves on CPU in seconds: `python make_tiny_llama.py DIR`.

Run with the vllm venv's python (it has torch, transformers and tokenizers); it needs no network
and no model hub. The weights are random (seeded), so the model answers gibberish: the tests
check the API, never the words. Shape: hidden 128, 2 heads of 64 (vLLM's CPU attention wants a
head size it has kernels for), 2 layers, a byte-level BPE tokenizer trained on a few sentences,
a chat template (vLLM's /v1/chat/completions refuses a tokenizer without one), and a context of
16384 so that liminati's default --max-model-len fits unchanged.
"""

from __future__ import annotations

import sys
from pathlib import Path

SENTENCES = [
    "Hello! How can I help you today?",
    "liminati puts vLLM and Open WebUI behind nginx for a team on a tailnet.",
    "The quick brown fox jumps over the lazy dog.",
    "A private certificate authority signs the gateway's certificate.",
    "Streaming responses arrive as server-sent events, ending with DONE.",
    "Say hello in one word. Count from one to ten: 1 2 3 4 5 6 7 8 9 10.",
    "The system prompt, the user and the assistant take turns in a chat.",
]

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}{{ eos_token }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

BOS, EOS, UNK, PAD = "<s>", "</s>", "<unk>", "<pad>"
CONTEXT = 16384


def main(out: Path) -> None:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    # byte-level BPE: every input string has a tokenization, whatever the test sends
    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=[UNK, BOS, EOS, PAD, "<|system|>", "<|user|>", "<|assistant|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(SENTENCES * 4, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        pad_token=PAD,
        model_max_length=CONTEXT,
    )
    tokenizer.chat_template = CHAT_TEMPLATE

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=64,
        max_position_embeddings=CONTEXT,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id

    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    # a smoke test of what vLLM will do first: render the chat template and tokenize it
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Say hello"}], add_generation_prompt=True, tokenize=False
    )
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    params = sum(p.numel() for p in model.parameters())
    print(f"tiny llama: {params} parameters, vocab {len(tokenizer)}, prompt of {len(ids)} tokens")
    print(f"saved to {out}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: make_tiny_llama.py OUTPUT_DIR")
    main(Path(sys.argv[1]))
