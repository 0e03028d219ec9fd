"""Test-wide set-up: offline Hub and a throwaway HF cache, set before anything imports huggingface_hub."""

import os
import tempfile


os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="sane_hf_test_hf_home_"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
