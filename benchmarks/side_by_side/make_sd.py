import torch

from sane_hf.zoo_models import build_zoo_model


for seed in (0, 1):
    torch.manual_seed(seed)
    m = build_zoo_model("resnet18", num_classes=100)
    sd = m.state_dict()
    g = torch.Generator().manual_seed(100 + seed)
    for k, v in sd.items():
        if k.endswith("running_mean") or (("bn" in k or "downsample.1" in k) and k.endswith((".weight", ".bias"))):
            v.copy_(torch.randn(v.shape, generator=g) * 0.1 + (1.0 if k.endswith(".weight") else 0.0))
        elif k.endswith("running_var"):
            v.copy_(torch.rand(v.shape, generator=g) + 0.5)
        elif k.endswith("num_batches_tracked"):
            v.fill_(1234)
    torch.save(sd, f"resnet18_sd{seed}.pt")
    print(len(sd), list(sd)[0], list(sd)[-1], sum(v.numel() for k, v in sd.items() if "num_batches" not in k))
