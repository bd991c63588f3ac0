#!/usr/bin/env python3
"""Independent PyTorch reference for the cxr-msn model crate.

Writes the small parity fixtures in ../fixtures/ that the Rust tests in
shared/tests/parity.rs load and match to 1e-5 (f32):

  loss.safetensors        MSN loss (sharpening, Sinkhorn, me-max, entropy) on fixed
                          embeddings, with gradients; Sinkhorn on its own
  pos_resize.safetensors  bicubic resize of a position grid (14x14 -> 6x6, 7x7, 16x16)
  vit_weights.safetensors a small ViT (D=48, 2 blocks, 6 heads, 3 channels) in timm/DeiT names
  vit_io.safetensors      its inputs (uint8 images) and outputs at 224 and 96 px, with and
                          without token masking, and the last block's [CLS] attention row
  head_paper.safetensors  projection head, paper layout (no bias before BN): weights, input,
  head_msn.safetensors    msn layout (biases): outputs in train and eval mode, updated BN stats
  msn_weights.safetensors f_ehr, g and prototypes of a multimodal MSN whose anchor and target
  msn_io.safetensors      are the ViT and paper head above, and one pretraining forward with EHR

The implementation follows the semantics of the original code bases (facebookresearch/msn
deit.py and losses.py, lightly's MSN loss), written here from scratch, and uses PyTorch's own
kernels (conv2d, layer_norm, gelu, softmax, interpolate, batch_norm), so it is independent of
Burn. Names mirror timm, which the Rust module tree mirrors too.

Run (CI does not; the fixtures are committed):
    python3 -m venv .venv && .venv/bin/pip install -r shared/tests/reference/requirements.txt
    .venv/bin/python shared/tests/reference/make_fixtures.py
"""

import math
import pathlib

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

OUT = pathlib.Path(__file__).resolve().parent.parent / "fixtures"
torch.manual_seed(2024)
torch.set_default_dtype(torch.float32)


# ---------------------------------------------------------------- ViT (DeiT / MSN semantics)
class Attention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q @ k.transpose(-2, -1)) * (c // self.heads) ** -0.5
        attn = attn.softmax(dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(b, n, c)
        return self.proj(out), attn


class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))  # exact (erf) GELU


class Block(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, 4 * dim)

    def forward(self, x):
        a, w = self.attn(self.norm1(x))
        x = x + a
        return x + self.mlp(self.norm2(x)), w


class PatchEmbed(nn.Module):
    def __init__(self, channels, dim, patch):
        super().__init__()
        self.proj = nn.Conv2d(channels, dim, kernel_size=patch, stride=patch)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


def resize_pos(pos, grid):
    """[1, 1+G*G, D] -> [1, 1+grid*grid, D]: bicubic, align_corners=False, [CLS] kept."""
    n, d = pos.shape[1] - 1, pos.shape[2]
    g = int(math.sqrt(n))
    if g == grid:
        return pos
    patch = pos[:, 1:].reshape(1, g, g, d).permute(0, 3, 1, 2)
    patch = F.interpolate(patch, size=(grid, grid), mode="bicubic", align_corners=False)
    patch = patch.permute(0, 2, 3, 1).reshape(1, grid * grid, d)
    return torch.cat([pos[:, :1], patch], dim=1)


class ViT(nn.Module):
    def __init__(self, channels=3, dim=48, depth=2, heads=6, patch=16, image=224):
        super().__init__()
        g = image // patch
        self.patch = patch
        self.patch_embed = PatchEmbed(channels, dim, patch)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + g * g, dim) * 0.02)
        self.blocks = nn.ModuleList([Block(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x, keep=None):
        """x [B,C,S,S]; keep [B,K] int64 patch indices or None -> ([B,D], last attention)."""
        b, _, s, _ = x.shape
        x = self.patch_embed(x)
        pos = resize_pos(self.pos_embed, s // self.patch)
        x = x + pos[:, 1:]
        if keep is not None:
            x = torch.gather(x, 1, keep.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        cls = (self.cls_token + pos[:, :1]).expand(b, -1, -1)
        x = torch.cat([cls, x], dim=1)
        attn = None
        for blk in self.blocks:
            x, attn = blk(x)
        return self.norm(x)[:, 0], attn


# ---------------------------------------------------------------- projection head
class ProjectionHead(nn.Module):
    def __init__(self, d_in, hidden, d_out, bias_before_bn):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden, bias=bias_before_bn)
        self.bn1 = nn.BatchNorm1d(hidden)
        self.fc2 = nn.Linear(hidden, hidden, bias=bias_before_bn)
        self.bn2 = nn.BatchNorm1d(hidden)
        self.fc3 = nn.Linear(hidden, d_out)

    def forward(self, x):
        x = F.gelu(self.bn1(self.fc1(x)))
        x = F.gelu(self.bn2(self.fc2(x)))
        return self.fc3(x)


def randomise_bn(head):
    """Non-trivial affine parameters and running statistics, so every path is exercised."""
    with torch.no_grad():
        for bn in (head.bn1, head.bn2):
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.3, 0.3)
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 2.0)


def head_state(head, prefix=""):
    return {
        prefix + k: v.detach().clone().contiguous()
        for k, v in head.state_dict().items()
        if not k.endswith("num_batches_tracked")
    }


# ---------------------------------------------------------------- MSN loss (literal form)
def sinkhorn(probs, iterations):
    """The MSN / lightly form: operates on p^T [K, B]."""
    if iterations == 0:
        return probs
    b, k = probs.shape
    q = probs.T.clone()
    q /= q.sum()
    for _ in range(iterations):
        q /= q.sum(dim=1, keepdim=True)
        q /= k
        q /= q.sum(dim=0, keepdim=True)
        q /= b
    q *= b
    return q.T


def msn_loss(anchors, targets, prototypes, tau, sharpen_t, iters, me_max_w, ent_w):
    views = anchors.shape[0] // targets.shape[0]
    anchors = F.normalize(anchors, dim=1)
    protos = F.normalize(prototypes, dim=1)
    anchor_probs = F.softmax(anchors @ protos.T / tau, dim=1)
    with torch.no_grad():
        t = F.normalize(targets, dim=1)
        target_probs = F.softmax(t @ protos.T / tau, dim=1)
        target_probs = target_probs ** (1.0 / sharpen_t)  # sharpen, probability form
        target_probs = target_probs / target_probs.sum(dim=1, keepdim=True)
        target_probs = sinkhorn(target_probs, iters)
    rep = target_probs.repeat((views, 1))
    ce = torch.mean(torch.sum(torch.log(anchor_probs ** (-rep)), dim=1))
    mean_probs = anchor_probs.mean(dim=0)
    me_max = -torch.sum(torch.log(mean_probs ** (-mean_probs))) + math.log(float(len(mean_probs)))
    entropy = torch.mean(torch.sum(torch.log(anchor_probs ** (-anchor_probs)), dim=1))
    total = ce + me_max_w * me_max + ent_w * entropy
    return total, ce, me_max, entropy, target_probs


def write(name, tensors):
    tensors = {k: v.detach().contiguous() for k, v in tensors.items()}
    save_file(tensors, str(OUT / name))
    size = (OUT / name).stat().st_size
    print(f"wrote {name:26s} {size / 1024:8.1f} KiB, {len(tensors)} tensors")


def loss_fixture():
    m, b, d, k = 3, 4, 16, 32
    out = {}
    cases = {
        "default": (0.1, 0.25, 3, 1.0, 0.0),
        "custom": (0.2, 0.5, 5, 0.7, 0.3),
        "no_sinkhorn": (0.1, 0.25, 0, 1.0, 0.0),
    }
    anchors = torch.randn(m * b, d)
    targets = torch.randn(b, d)
    prototypes = torch.randn(k, d)
    out["anchors"], out["targets"], out["prototypes"] = anchors, targets, prototypes
    for name, (tau, t, iters, me_w, ent_w) in cases.items():
        a = anchors.clone().requires_grad_(True)
        p = prototypes.clone().requires_grad_(True)
        total, ce, me_max, ent, tp = msn_loss(a, targets, p, tau, t, iters, me_w, ent_w)
        total.backward()
        out[f"{name}.total"] = total.reshape(1)
        out[f"{name}.ce"] = ce.reshape(1)
        out[f"{name}.me_max"] = me_max.reshape(1)
        out[f"{name}.entropy"] = ent.reshape(1)
        out[f"{name}.target_probs"] = tp
        out[f"{name}.grad_anchors"] = a.grad
        out[f"{name}.grad_prototypes"] = p.grad
        out[f"{name}.config"] = torch.tensor([tau, t, iters, me_w, ent_w], dtype=torch.float64)
    probs = torch.rand(6, 10) + 0.05
    probs = probs / probs.sum(dim=1, keepdim=True)
    out["sinkhorn.input"] = probs
    out["sinkhorn.output3"] = sinkhorn(probs, 3)
    out["sinkhorn.output20"] = sinkhorn(probs, 20)
    write("loss.safetensors", out)


def pos_resize_fixture():
    pos = torch.randn(1, 197, 8)
    out = {"pos": pos}
    for grid in (6, 7, 16):
        out[f"resized{grid}"] = resize_pos(pos, grid)
    write("pos_resize.safetensors", out)


def to_input(u8):
    # (u - 127.5) / 64 is exact in f32 on both sides.
    return (u8.to(torch.float32) - 127.5) / 64.0


def random_keep(batch, n, ratio):
    k = math.floor(n * (1 - ratio) + 1e-9)
    return torch.stack([torch.randperm(n)[:k].sort().values for _ in range(batch)])


def vit_fixture():
    vit = ViT()
    vit.eval()
    write("vit_weights.safetensors", {k: v.clone() for k, v in vit.state_dict().items()})
    u224 = torch.randint(0, 256, (2, 3, 224, 224), dtype=torch.uint8)
    u96 = torch.randint(0, 256, (3, 3, 96, 96), dtype=torch.uint8)
    keep224 = random_keep(2, 196, 0.15)
    keep96 = random_keep(3, 36, 0.15)
    with torch.no_grad():
        cls224, attn224 = vit(to_input(u224))
        cls224m, _ = vit(to_input(u224), keep224)
        cls96, _ = vit(to_input(u96))
        cls96m, _ = vit(to_input(u96), keep96)
    write(
        "vit_io.safetensors",
        {
            "images224": u224,
            "images96": u96,
            "keep224": keep224,
            "keep96": keep96,
            "cls224": cls224,
            "cls224_masked": cls224m,
            "cls96": cls96,
            "cls96_masked": cls96m,
            "attn224_last_cls_row": attn224[:, :, 0, :],
        },
    )
    return vit, u224


def head_fixture(name, d_in, hidden, d_out, bias_before_bn):
    head = ProjectionHead(d_in, hidden, d_out, bias_before_bn)
    randomise_bn(head)
    weights = head_state(head)
    x = torch.randn(10, d_in)
    head.train()
    with torch.no_grad():
        y_train = head(x)
    head.eval()
    with torch.no_grad():
        y_eval = head(x)
    out = dict(weights)
    out.update(
        {
            "io.input": x,
            "io.train_output": y_train,
            "io.eval_output": y_eval,
            "io.bn1_running_mean": head.bn1.running_mean,
            "io.bn1_running_var": head.bn1.running_var,
        }
    )
    write(f"head_{name}.safetensors", out)
    return head


def msn_fixture(vit, head, u224):
    """One pretraining forward of the multimodal MSN, paper profile, with explicit masks.
    Anchor and target branches both hold `vit` and `head` (as right after initialisation);
    the target images are vit_io's images224 followed by two more (B = 4: a batch of two
    makes BatchNorm statistics too ill-conditioned for a 1e-5 comparison)."""
    d, ehr_in, ehr_dim, k, b, focal = 48, 13, 8, 32, 4, 2
    f_ehr = nn.Linear(ehr_in, ehr_dim)
    g = nn.Linear(d + ehr_dim, d)
    bound = 1.0 / math.sqrt(d)
    prototypes = torch.empty(k, d).uniform_(-bound, bound)
    weights = {}
    weights.update({"ehr.f_ehr." + k2: v.clone() for k2, v in f_ehr.state_dict().items()})
    weights.update({"ehr.g." + k2: v.clone() for k2, v in g.state_dict().items()})
    weights["prototypes"] = prototypes.clone()
    write("msn_weights.safetensors", weights)

    extra_u8 = torch.randint(0, 256, (2, 3, 224, 224), dtype=torch.uint8)
    target_u8 = torch.cat([u224, extra_u8], dim=0)
    focal_u8 = torch.randint(0, 256, (focal * b, 3, 96, 96), dtype=torch.uint8)
    ehr = torch.zeros(b, ehr_in)
    ehr[0, [1, 3, 6, 8, 10]] = 1.0  # a hand-made "all" encoding per image
    ehr[0, 2] = 0.6
    ehr[1, [0, 4, 7, 9, 12]] = 1.0
    ehr[1, 2] = 0.3
    ehr[2, [0, 3, 5, 8, 11]] = 1.0
    ehr[2, 2] = 0.9
    ehr[3, [1, 6, 7, 9, 12]] = 1.0
    ehr[3, 2] = 0.1
    keep224 = random_keep(b, 196, 0.15)
    keep96 = random_keep(focal * b, 36, 0.15)

    head.train()  # batch statistics in both branches, as in pretraining
    with torch.no_grad():
        z_t = head(vit(to_input(target_u8))[0])
        v224, _ = vit(to_input(target_u8), keep224)
        v96, _ = vit(to_input(focal_u8), keep96)
        v = torch.cat([v224, v96], dim=0)  # view-major: [M*B, D]
        e = f_ehr(ehr).repeat((1 + focal, 1))
        z_a = head(g(torch.cat([v, e], dim=1)))  # one BN group over all anchors (paper)
        total, ce, me_max, ent, _ = msn_loss(z_a, z_t, prototypes, 0.1, 0.25, 3, 1.0, 0.0)
    write(
        "msn_io.safetensors",
        {
            "extra_target_images": extra_u8,
            "focal_images": focal_u8,
            "ehr": ehr,
            "keep224": keep224,
            "keep96": keep96,
            "targets": z_t,
            "anchors": z_a,
            "loss.total": total.reshape(1),
            "loss.ce": ce.reshape(1),
            "loss.me_max": me_max.reshape(1),
        },
    )


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    print(f"torch {torch.__version__}; writing to {OUT}")
    loss_fixture()
    pos_resize_fixture()
    vit, u224 = vit_fixture()
    paper_head = head_fixture("paper", 48, 192, 48, bias_before_bn=False)
    head_fixture("msn", 48, 64, 32, bias_before_bn=True)
    msn_fixture(vit, paper_head, u224)


if __name__ == "__main__":
    main()
