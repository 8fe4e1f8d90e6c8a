"""polypythia_trainer: trains one PolyPythias run (GPT-NeoX on Ray Train, DDP or DeepSpeed)."""

__version__ = "0.1.0"
