"""lightning-llm: build a language model from scratch."""
