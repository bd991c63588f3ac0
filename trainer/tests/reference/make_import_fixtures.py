#!/usr/bin/env python3
"""Foreign checkpoints for the tests of `cxr-msn import` and `cxr-msn export-weights`.

Writes small checkpoints (random weights, a ViT of width 32, 2 blocks, 2 heads, patch 8,
32 px) in the key layouts researchers bring, plus what the PyTorch models compute on fixed
inputs, into ../fixtures/import/. The Rust tests in trainer/tests/import.rs import each
file and must reproduce those outputs to 1e-5.

  msn_deit.pth.tar       facebookresearch/msn: {'encoder', 'target_encoder'} state dicts
                         of a DeiT with the `fc` projection head (fc1 bn1 fc2 bn2 fc3),
                         saved from DistributedDataParallel (`module.` prefix), plus
                         'prototypes', a real AdamW 'opt' state and the scalars MSN saves
  cxr_ehr_msn.ckpt       nyuad-cai/CXR-EHR-MSN: a Lightning checkpoint whose 'state_dict'
                         holds `backbone.` (target) and `anchor_backbone.` torchvision ViTs,
                         lightly-style `projection_head.layers.N` heads, `prototypes`,
                         `f_ehr` and `ehr_cxr_project_g`, beside Lightning's own entries
  torchvision_vit.pth    a torchvision.models.VisionTransformer state dict
  timm_vit.safetensors   a timm VisionTransformer state dict, as timm's hub repositories
                         ship it
  reference.safetensors  inputs and outputs: [CLS] embeddings and projections (BatchNorm in
                         eval mode), and the torchvision model on grey 48 px images after
                         its position grid is resized bicubically and its input replicated
                         to 3 ImageNet-normalised channels (what a folded 1-channel import
                         must reproduce)

The models are the real torchvision and timm classes; the MSN and Lightning wrappers only
add the head, prototype and EHR layers with the names those code bases use.

Run (CI does not; the files are committed):
    python3 -m venv .venv && .venv/bin/pip install -r trainer/tests/reference/requirements.txt
    .venv/bin/python trainer/tests/reference/make_import_fixtures.py
"""

import pathlib
from collections import OrderedDict

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from safetensors.torch import save_file

OUT = pathlib.Path(__file__).resolve().parent.parent / "fixtures" / "import"
IMAGE, PATCH, DIM, DEPTH, HEADS, MLP = 32, 8, 32, 2, 2, 128
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406])
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225])

torch.manual_seed(7)
torch.set_default_dtype(torch.float32)


def jitter(module, scale=0.05):
    """Moves every parameter and BatchNorm statistic off its initial value, so that a
    weight loaded into the wrong place, or not at all, changes the outputs."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * scale)
        for name, b in module.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn_like(b) * 0.1)
            elif name.endswith("running_var"):
                b.copy_(torch.rand_like(b) + 0.5)
            elif name.endswith("num_batches_tracked"):
                b.fill_(17)
    return module


def timm_vit(num_classes=0, image=IMAGE):
    return jitter(
        timm.models.vision_transformer.VisionTransformer(
            img_size=image, patch_size=PATCH, in_chans=3, num_classes=num_classes,
            embed_dim=DIM, depth=DEPTH, num_heads=HEADS, mlp_ratio=MLP // DIM,
            qkv_bias=True, class_token=True, global_pool="token",
        )
    ).eval()


def torchvision_vit(image=IMAGE):
    return jitter(
        torchvision.models.VisionTransformer(
            image_size=image, patch_size=PATCH, num_layers=DEPTH, num_heads=HEADS,
            hidden_dim=DIM, mlp_dim=MLP,
        )
    ).eval()


def timm_cls(model, x):
    return model.forward_features(x)[:, 0]


def torchvision_cls(model, x):
    tokens = model._process_input(x)
    cls = model.class_token.expand(x.shape[0], -1, -1)
    return model.encoder(torch.cat([cls, tokens], dim=1))[:, 0]


def msn_fc(hidden, out):
    """The projection head facebookresearch/msn puts on a DeiT as `fc` (use_bn=True)."""
    return nn.Sequential(OrderedDict([
        ("fc1", nn.Linear(DIM, hidden)), ("bn1", nn.BatchNorm1d(hidden)), ("gelu1", nn.GELU()),
        ("fc2", nn.Linear(hidden, hidden)), ("bn2", nn.BatchNorm1d(hidden)), ("gelu2", nn.GELU()),
        ("fc3", nn.Linear(hidden, out)),
    ]))


class DistributedLike(nn.Module):
    """Names parameters as DistributedDataParallel does (`module.` prefix)."""

    def __init__(self, module):
        super().__init__()
        self.module = module


class LightlyMsnHead(nn.Module):
    """lightly's MSNProjectionHead: no bias before BatchNorm, layers in `layers.N`."""

    def __init__(self, d_in, hidden, out):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(d_in, hidden, bias=False), nn.BatchNorm1d(hidden), nn.GELU(),
            nn.Linear(hidden, hidden, bias=False), nn.BatchNorm1d(hidden), nn.GELU(),
            nn.Linear(hidden, out),
        )

    def forward(self, x):
        return self.layers(x)


class CxrEhrMsnLike(nn.Module):
    """The attribute names of the authors' CxrEhrMSN LightningModule."""

    def __init__(self, ehr_in, ehr_out, prototypes):
        super().__init__()
        self.backbone = torchvision_vit()
        self.projection_head = jitter(LightlyMsnHead(DIM, 4 * DIM, DIM)).eval()
        self.anchor_backbone = torchvision_vit()
        self.anchor_projection_head = jitter(LightlyMsnHead(DIM, 4 * DIM, DIM)).eval()
        self.prototypes = nn.Linear(DIM, prototypes, bias=False).weight
        self.f_ehr = nn.Linear(ehr_in, ehr_out)
        self.ehr_cxr_project_g = nn.Linear(ehr_out + DIM, DIM)
        jitter(self.f_ehr)
        jitter(self.ehr_cxr_project_g)


def adamw_state(params):
    """A real optimiser state dict (integer keys, tuples, step tensors), as checkpoints
    carry it. Works on copies: the model's own weights stay as the references saw them."""
    params = [p.detach().clone().requires_grad_(True) for p in params]
    opt = torch.optim.AdamW(params, lr=1e-3)
    sum((p * p).sum() for p in params).backward()
    opt.step()
    for p in params:
        p.grad = None
    return opt.state_dict()


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    ref = OrderedDict()
    images = torch.randn(2, 3, IMAGE, IMAGE)
    ref["images"] = images

    # ------------------------------------------------------------ facebookresearch/msn
    hidden, out, k = 64, 16, 10
    encoder = timm_vit()
    encoder.fc = jitter(msn_fc(hidden, out)).eval()
    target = timm_vit()
    target.fc = jitter(msn_fc(hidden, out)).eval()
    prototypes = torch.empty(k, out).uniform_(-(out ** -0.5), out ** -0.5)
    with torch.no_grad():
        for name, model in (("anchor", encoder), ("target", target)):
            cls = timm_cls(model, images)
            ref[f"msn.{name}_cls"] = cls
            ref[f"msn.{name}_z"] = model.fc(cls)
    ref["msn.prototypes"] = prototypes
    torch.save(
        {
            "encoder": DistributedLike(encoder).state_dict(),
            "opt": adamw_state(encoder.parameters()),
            "prototypes": prototypes,
            "target_encoder": DistributedLike(target).state_dict(),
            "epoch": 300,
            "loss": 2.3125,
            "batch_size": 64,
            "world_size": 8,
            "lr": 0.001,
            "temperature": 0.1,
        },
        OUT / "msn_deit.pth.tar",
    )

    # ------------------------------------------------------------ nyuad-cai/CXR-EHR-MSN
    ehr_in, ehr_out, k = 3, 8, 12  # ehr_in 3: the `demographic` feature set
    model = CxrEhrMsnLike(ehr_in, ehr_out, k)
    ehr = torch.randn(2, ehr_in)
    with torch.no_grad():
        target_cls = torchvision_cls(model.backbone, images)
        anchor_cls = torchvision_cls(model.anchor_backbone, images)
        fused = model.ehr_cxr_project_g(torch.cat((anchor_cls, model.f_ehr(ehr)), 1))
        ref["lightning.ehr"] = ehr
        ref["lightning.target_cls"] = target_cls
        ref["lightning.target_z"] = model.projection_head(target_cls)
        ref["lightning.anchor_cls"] = anchor_cls
        ref["lightning.anchor_z"] = model.anchor_projection_head(fused)
        ref["lightning.prototypes"] = model.prototypes.detach().clone()
    torch.save(
        {
            "epoch": 99,
            "global_step": 12300,
            "pytorch-lightning_version": "2.1.3",
            "state_dict": model.state_dict(),
            "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"total": {"ready": 100}}}},
            "callbacks": {},
            "optimizer_states": [adamw_state(model.anchor_backbone.parameters())],
            "lr_schedulers": [{"T_max": 100, "eta_min": 0.0, "base_lrs": [0.0001], "last_epoch": 99}],
        },
        OUT / "cxr_ehr_msn.ckpt",
    )

    # ------------------------------------------------------------ torchvision
    vit = torchvision_vit()
    state = vit.state_dict()
    torch.save(state, OUT / "torchvision_vit.pth")
    with torch.no_grad():
        ref["torchvision.cls"] = torchvision_cls(vit, images)
        # Grey 48 px images through the same weights: a 6x6 position grid resized from
        # 4x4, and the grey image given to the 3-channel model as ImageNet-normalised RGB.
        grid = 48 // PATCH
        pos = state["encoder.pos_embedding"]
        patch_pos = pos[:, 1:].reshape(1, IMAGE // PATCH, IMAGE // PATCH, DIM).permute(0, 3, 1, 2)
        patch_pos = F.interpolate(patch_pos, size=(grid, grid), mode="bicubic", align_corners=False)
        resized = dict(state)
        resized["encoder.pos_embedding"] = torch.cat(
            [pos[:, :1], patch_pos.permute(0, 2, 3, 1).reshape(1, grid * grid, DIM)], dim=1
        )
        vit48 = torchvision.models.VisionTransformer(
            image_size=48, patch_size=PATCH, num_layers=DEPTH, num_heads=HEADS,
            hidden_dim=DIM, mlp_dim=MLP,
        ).eval()
        vit48.load_state_dict(resized)
        grey = torch.rand(2, 1, 48, 48)
        rgb = (grey.repeat(1, 3, 1, 1) - IMAGENET_MEAN.view(1, 3, 1, 1)) / IMAGENET_STD.view(1, 3, 1, 1)
        ref["torchvision.grey48"] = grey
        ref["torchvision.grey48_cls"] = torchvision_cls(vit48, rgb)

    # ------------------------------------------------------------ timm
    vit = timm_vit(num_classes=10)
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, OUT / "timm_vit.safetensors")
    with torch.no_grad():
        ref["timm.cls"] = timm_cls(vit, images)

    save_file({k: v.contiguous() for k, v in ref.items()}, OUT / "reference.safetensors")
    for path in sorted(OUT.iterdir()):
        print(f"{path.name}: {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
