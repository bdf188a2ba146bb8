import os
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, GPT2Config, GPT2ForSequenceClassification

DATA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data"
os.environ.setdefault("RANKGYM_DATA_DIR", str(DATA_DIR))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(2)


@pytest.fixture
def small_gpt2():
    """A random 2-block GPT-2 classifier (Conv1D modules)."""
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=300, n_layer=2, n_head=2, n_embd=32, n_positions=64, num_labels=2, pad_token_id=0)
    return GPT2ForSequenceClassification(config).eval()


@pytest.fixture
def small_bert():
    """A random 2-layer BERT classifier (nn.Linear modules)."""
    torch.manual_seed(0)
    config = BertConfig(vocab_size=300, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, num_labels=2)
    return BertForSequenceClassification(config).eval()


@pytest.fixture
def sst2_dir():
    if not (DATA_DIR / "sst2" / "train.tsv").is_file():
        pytest.skip(f"SST-2 not found at {DATA_DIR}")
    return DATA_DIR
