"""The aligner prompt, and neutralisation of untrusted text.

Template (ChatML, as the SmolLM2 chat template renders it)::

    <|im_start|>system
    {policy.instruction}<|im_end|>
    <|im_start|>user
    Question:
    {question}

    Answer to correct:
    {answer}<|im_end|>
    <|im_start|>assistant
    {correction}<|im_end|>

The question and answer are untrusted: any special token string in them (``<|im_end|>``,
``<|im_start|>``, ``<|endoftext|>``, or any other special/added token of the tokenizer) is broken
with a zero-width joiner so it tokenises as plain text and cannot close the turn or open a new one.
"""
from __future__ import annotations

ZWJ = "\u200d"


def special_strings(tokenizer) -> list[str]:
    specials = set(getattr(tokenizer, "all_special_tokens", []) or [])
    for tok in (getattr(tokenizer, "added_tokens_decoder", {}) or {}).values():
        if getattr(tok, "special", False):
            specials.add(str(tok))
    return sorted((s for s in specials if s), key=len, reverse=True)


def neutralise(text: str, specials: list[str]) -> str:
    """Break every special-token string in ``text`` so it cannot act as prompt structure."""
    for s in specials:
        if s in text:
            text = text.replace(s, s[0] + ZWJ + s[1:])
    return text


def user_message(question: str, answer: str) -> str:
    return f"Question:\n{question}\n\nAnswer to correct:\n{answer}"


def build_messages(instruction: str, question: str, answer: str, specials: list[str]) -> list[dict]:
    return [
        {"role": "system", "content": instruction},
        {"role": "user", "content": user_message(neutralise(question, specials), neutralise(answer, specials))},
    ]


def build_prompt(tokenizer, instruction: str, question: str, answer: str) -> str:
    """The prompt text up to the assistant turn's start; the correction follows it."""
    messages = build_messages(instruction, question, answer, special_strings(tokenizer))
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    # Models without a chat template get a plain layout with the same fields.
    return f"{messages[0]['content']}\n\n{messages[1]['content']}\n\nCorrected answer:\n"


# Chat-template special tokens and role markers of common model families. No final answer should
# carry any of them (they are prompt structure, not content); the evaluation checks every output.
TEMPLATE_MARKERS = (
    "<|im_start|>", "<|im_end|>", "<|endoftext|>",                      # ChatML (Qwen, SmolLM)
    "<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",  # Llama 3
    "[INST]", "[/INST]", "<<SYS>>", "<</SYS>>",                         # Llama 2, Mistral
    "<start_of_turn>", "<end_of_turn>",                                 # Gemma
    "<|system|>", "<|user|>", "<|assistant|>", "<|end|>",               # Phi
    "<\uff5cbegin\u2581of\u2581sentence\uff5c>", "<\uff5cend\u2581of\u2581sentence\uff5c>",  # DeepSeek
    "<\uff5cUser\uff5c>", "<\uff5cAssistant\uff5c>",
    "<s>", "</s>", "<unk>", "<pad>", "<mask>", "<|pad|>",                 # tokenizers' own specials
)


def template_markers_in(text: str) -> list[str]:
    """The chat-template markers that occur in ``text``."""
    return [m for m in TEMPLATE_MARKERS if m in text]


def chat_prompt(tokenizer, messages: list[dict]) -> str:
    """A chat model's prompt for untrusted ``messages``: special tokens in them neutralised first."""
    specials = special_strings(tokenizer)
    safe = [{"role": m["role"], "content": neutralise(m["content"], specials)} for m in messages]
    return tokenizer.apply_chat_template(safe, tokenize=False, add_generation_prompt=True)
