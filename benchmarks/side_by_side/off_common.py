import os
import warnings

import torch
from common import HERE, add_official_path


add_official_path()
warnings.filterwarnings("ignore")
from SANE.models.def_AE_module import AEModule  # noqa: E402 (importable once add_official_path ran)


def ae_config_A():
    return {
        "ae:transformer_type": "gpt2",
        "ae:i_dim": 288,
        "ae:d_model": 256,
        "ae:nhead": 8,
        "ae:num_layers": 4,
        "ae:lat_dim": 128,
        "ae:dropout": 0.0,
        "ae:max_positions": [55000, 100, 550],
        "training::windowsize": 256,
        "trainset::batchsize": 32,
        "optim::optimizer": "adamw",
        "optim::lr": 1e-4,
        "optim::wd": 3e-9,
        "optim::scheduler": None,
        "training::gamma": 0.05,
        "training::temperature": 0.1,
        "training::contrast": "simclr",
        "training::reduction": "mean",
        "training::precision": "amp",
        "model::compile": False,
        "seed": 32,
        "device": "cpu",
    }


def build_module():
    m = AEModule(ae_config_A())
    m.scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer=m.optimizer,
        max_lr=1e-4,
        total_steps=50 * 123 * 1,
        pct_start=0.3,
        anneal_strategy="cos",
        cycle_momentum=True,
        base_momentum=0.85,
        max_momentum=0.95,
        div_factor=25.0,
        final_div_factor=10000.0,
        three_phase=False,
        last_epoch=-1,
    )
    return m


def official_tokens():
    d = torch.load(os.path.join(HERE, "results", "official_tokens.pt"), weights_only=True)
    return d["tokens"], d["mask"], d["pos"]
