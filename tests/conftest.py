"""Suite-wide settings: offline, quiet, deterministic."""
import os

# Belt and braces: the Makefile sets these before Python starts; running pytest directly
# must not reach the network either.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
