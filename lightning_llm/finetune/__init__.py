"""Fine-tuning a trained model: full or LoRA (through peft), on plain text or instruction data,
with the base domain's loss measured before and after (forgetting).

`llm finetune` (lightning_llm/stages/finetune.py) composes the config and calls these pieces;
the Lightning loop itself is lightning_llm/training/'s LanguageModel and Trainer, unchanged.
"""
