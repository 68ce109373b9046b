"""stillflow: continuous trace distillation for LLM agents, on Kafka."""

__version__ = "0.1.0"
