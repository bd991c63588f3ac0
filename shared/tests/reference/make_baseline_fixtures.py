#!/usr/bin/env python3
"""Independent PyTorch reference for the DINO and MAE baselines of the cxr-msn model crate.

Writes three small parity fixtures in ../fixtures/ for the Rust baseline tests (f32, 1e-5):

  dino_head_weights.safetensors  a DINO projection head (48 -> 32 -> 32 -> 16, L2-normalise,
                                 weight-normalised last layer 16 -> 64 with its gain fixed to 1)
  mae_decoder_weights.safetensors an MAE decoder (width 32, 2 blocks, 4 heads) in MAE/timm names
  baselines.safetensors          inputs and outputs:
      dino.head.*     the head on random inputs
      dino.loss*.*    the multi-crop DINO loss (2 global + 3 local views), its gradient with
                      respect to the student outputs, the teacher probabilities and the
                      updated center, at two teacher temperatures
      mae.pos_embed.* the fixed 2-D sin-cos position embedding (grids 14 and 6, [CLS] row 0)
      mae.loss.*      the MAE reconstruction loss on given predictions (normalised-pixel and raw)
      mae.forward.*   one whole MAE forward: the small ViT of vit_weights.safetensors as
                      encoder on 96 px images with explicit kept patches, then the decoder

The encoder is the ViT class of make_fixtures.py, loaded (strictly) from the committed
vit_weights.safetensors, so both fixture sets share one encoder. Images are stored as uint8
and mapped to floats by (u - 127.5) / 64, as in make_fixtures.py (the Rust side does the same).

The implementation follows the semantics of DINO (Caron et al. 2021: multi-crop cross-entropy
between centred, sharpened teacher and student distributions; weight-normalised last layer)
and MAE (He et al. 2021: decoder over kept tokens plus mask tokens, fixed sin-cos position
embedding, per-patch normalised-pixel loss on removed patches), written here from scratch on
PyTorch's own kernels (linear, layer_norm, gelu, softmax, log_softmax, normalize), so it is
independent of Burn. Weights are random but non-trivial (biases and LayerNorm affine
parameters included) so that every parameter is exercised.

Run (CI does not; the fixtures are committed). make_fixtures.py must have been run first:
    .venv/bin/python shared/tests/reference/make_baseline_fixtures.py
"""

import math
import pathlib
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from make_fixtures import Block, ViT, random_keep, resize_pos, to_input  # noqa: E402

OUT = HERE.parent / "fixtures"
torch.set_default_dtype(torch.float32)
torch.manual_seed(2025)  # after the import: make_fixtures seeds with 2024 at import time


def write(name, tensors):
    tensors = {k: v.detach().contiguous() for k, v in tensors.items()}
    save_file(tensors, str(OUT / name))
    size = (OUT / name).stat().st_size
    print(f"wrote {name:32s} {size / 1024:8.1f} KiB, {len(tensors)} tensors")


# ---------------------------------------------------------------- DINO head
class DinoHead(nn.Module):
    """3-layer MLP with exact GELU, bottleneck, row-wise L2 normalisation, then a
    weight-normalised linear layer without bias whose gain is frozen at 1: the effective
    weight is each output row of the raw parameter V divided by its Euclidean norm."""

    def __init__(self, d_in=48, hidden=32, bottleneck=16, d_out=64):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, bottleneck)
        self.last_layer = nn.Linear(bottleneck, d_out, bias=False)  # holds the raw V
        with torch.no_grad():
            for fc in (self.fc1, self.fc2, self.fc3):
                fc.weight.normal_(0.0, 0.02)
                fc.bias.normal_(0.0, 0.02)  # not zero, so the test exercises them
            self.last_layer.weight.normal_(0.0, 1.0)

    def effective_last_weight(self):
        v = self.last_layer.weight  # [out, in]
        return v / v.norm(dim=1, keepdim=True)

    def forward(self, x):
        x = F.gelu(self.fc1(x))
        x = F.gelu(self.fc2(x))
        x = self.fc3(x)
        x = F.normalize(x, dim=-1, p=2, eps=1e-12)
        return F.linear(x, self.effective_last_weight())


def dino_head_fixture():
    head = DinoHead()
    x = torch.randn(5, 48)
    with torch.no_grad():
        y = head(x)
        # cross-check against PyTorch's own weight-norm parametrisation with g = 1
        ref = nn.Linear(16, 64, bias=False)
        ref.weight.copy_(head.last_layer.weight)
        ref = nn.utils.parametrizations.weight_norm(ref, dim=0)
        ref.parametrizations.weight.original0.fill_(1.0)
        z = F.normalize(head.fc3(F.gelu(head.fc2(F.gelu(head.fc1(x))))), dim=-1)
        assert torch.allclose(ref(z), y, atol=1e-6)
    write("dino_head_weights.safetensors", {k: v.clone() for k, v in head.state_dict().items()})
    return {"dino.head.input": x, "dino.head.output": y}


# ---------------------------------------------------------------- DINO loss
def dino_loss(student, teacher, center, student_temp, teacher_temp, n_global, n_crops):
    """student [n_crops*B, K], teacher [n_global*B, K], both view-major; center [1, K]."""
    logp = F.log_softmax(student / student_temp, dim=-1).chunk(n_crops)
    with torch.no_grad():
        q_all = F.softmax((teacher - center) / teacher_temp, dim=-1)
    q = q_all.chunk(n_global)
    total, terms = 0.0, 0
    for iq in range(n_global):
        for v in range(n_crops):
            if v == iq:  # a teacher view is never matched with the same student view
                continue
            total = total + torch.sum(-q[iq] * logp[v], dim=-1).mean()
            terms += 1
    return total / terms, q_all


def update_center(center, teacher, momentum):
    return center * momentum + teacher.mean(dim=0, keepdim=True) * (1.0 - momentum)


def dino_loss_fixture():
    b, n_global, n_crops, k = 4, 2, 5, 64
    # scaled so that student / 0.1 stays moderate and the loss is O(5), not O(25): keeps
    # f32 rounding of the value well inside a 1e-5 comparison
    student = torch.randn(n_crops * b, k) * 0.3
    teacher = torch.randn(n_global * b, k)
    center = torch.randn(1, k) * 0.1
    out = {"dino.loss.student": student, "dino.loss.teacher": teacher, "dino.loss.center": center}
    for name, t_temp in (("loss", 0.055), ("loss2", 0.07)):
        s_temp, m = 0.1, 0.9
        s = student.clone().requires_grad_(True)
        value, probs = dino_loss(s, teacher, center, s_temp, t_temp, n_global, n_crops)
        value.backward()
        assert torch.allclose(probs.sum(dim=-1), torch.ones(n_global * b), atol=1e-6)
        out[f"dino.{name}.config"] = torch.tensor(
            [s_temp, t_temp, m, n_global, n_crops], dtype=torch.float64
        )
        out[f"dino.{name}.value"] = value.reshape(1)
        out[f"dino.{name}.grad_student"] = s.grad
        if name == "loss":
            out["dino.loss.new_center"] = update_center(center, teacher, m)
            out["dino.loss.teacher_probs"] = probs
    return out


# ---------------------------------------------------------------- MAE pieces
def sincos_1d(width, pos):
    """pos [M] float64 -> [M, width]: [sin(pos*omega), cos(pos*omega)],
    omega_i = 1 / 10000^(i / (width/2)), i = 0 .. width/2 - 1."""
    assert width % 2 == 0
    omega = 1.0 / 10000.0 ** (torch.arange(width // 2, dtype=torch.float64) / (width / 2.0))
    angles = pos.to(torch.float64)[:, None] * omega[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


def sincos_2d(width, grid):
    """[1, 1 + grid*grid, width] float32, row 0 (for [CLS]) all zeros.

    Token t = r * grid + c (row-major over row r, column c). Channel order: the first
    width/2 channels are the 1-D embedding of the COLUMN index c, the second width/2 of the
    ROW index r. Reasoning about MAE's construction: it takes np.meshgrid(grid_w, grid_h)
    with the default indexing='xy', whose outputs have shape (len(grid_h), len(grid_w)) and
    satisfy grid[0][r][c] = grid_w[c] = c and grid[1][r][c] = grid_h[r] = r; it flattens
    them row-major (t = r * grid + c) and puts the embedding of grid[0] (the column)
    first. `check_sincos_against_meshgrid` re-derives this literally with numpy."""
    assert width % 4 == 0
    r = torch.arange(grid, dtype=torch.float64).repeat_interleave(grid)  # t // grid
    c = torch.arange(grid, dtype=torch.float64).repeat(grid)  # t % grid
    emb = torch.cat([sincos_1d(width // 2, c), sincos_1d(width // 2, r)], dim=1)
    emb = torch.cat([torch.zeros(1, width, dtype=torch.float64), emb], dim=0)
    return emb.to(torch.float32).unsqueeze(0)


def check_sincos_against_meshgrid(width, grid, emb):
    """Literal numpy transcription of the MAE recipe (meshgrid 'xy', grid[0] first)."""
    gw = np.arange(grid, dtype=np.float64)
    gh = np.arange(grid, dtype=np.float64)
    mesh = np.meshgrid(gw, gh)  # indexing='xy'
    assert mesh[0].shape == (grid, grid)
    assert all(mesh[0][r][c] == c and mesh[1][r][c] == r for r in range(grid) for c in range(grid))

    def one_d(w, pos):
        omega = 1.0 / 10000 ** (np.arange(w // 2, dtype=np.float64) / (w / 2.0))
        out = np.outer(pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    ref = np.concatenate([one_d(width // 2, mesh[0]), one_d(width // 2, mesh[1])], axis=1)
    ref = np.concatenate([np.zeros((1, width)), ref], axis=0).astype(np.float32)
    assert np.array_equal(ref, emb[0].numpy())


def patchify(imgs, p):
    """[N, C, H, W] -> [N, h*w, p*p*C]; patch i*w + j; inside a patch (row, column, channel)."""
    n, ch, hh, ww = imgs.shape
    h, w = hh // p, ww // p
    x = imgs.reshape(n, ch, h, p, w, p)  # n c h pr w pc
    x = x.permute(0, 2, 4, 3, 5, 1)  # n h w pr pc c
    return x.reshape(n, h * w, p * p * ch)


def mae_loss(pred, target, mask, norm_pix=True):
    """pred, target [N, L, P]; mask [N, L] with 1 = removed (scored), 0 = kept."""
    if norm_pix:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)  # unbiased (n - 1)
        target = (target - mean) / torch.sqrt(var + 1e-6)
    per_patch = ((pred - target) ** 2).mean(dim=-1)
    return (per_patch * mask).sum() / mask.sum()


def normalised_target(target):
    mean = target.mean(dim=-1, keepdim=True)
    var = target.var(dim=-1, keepdim=True)
    return (target - mean) / torch.sqrt(var + 1e-6)


def mae_pos_fixture():
    out = {}
    for grid in (14, 6):
        emb = sincos_2d(32, grid)
        check_sincos_against_meshgrid(32, grid, emb)
        out[f"mae.pos_embed.grid{grid}"] = emb
    return out


def mae_loss_fixture():
    u8 = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    target = patchify(to_input(u8), 16)
    pred = torch.randn(2, 16, 768)
    mask = torch.zeros(2, 16)
    for row, ones in enumerate((10, 9)):  # 10 removed patches in image 0, 9 in image 1
        mask[row, torch.randperm(16)[:ones]] = 1.0
    p = pred.clone().requires_grad_(True)
    value = mae_loss(p, target, mask)
    value.backward()
    with torch.no_grad():
        value_raw = mae_loss(pred, target, mask, norm_pix=False)
        zero = mae_loss(normalised_target(target), target, mask)
        assert zero.item() == 0.0, zero
    return {
        "mae.loss.images": u8,
        "mae.loss.pred": pred,
        "mae.loss.mask": mask,
        "mae.loss.value": value.detach().reshape(1),
        "mae.loss.grad_pred": p.grad,
        "mae.loss.value_raw": value_raw.reshape(1),
    }


class MaeDecoder(nn.Module):
    def __init__(self, enc_dim=48, dim=32, depth=2, heads=4, patch=16, channels=3):
        super().__init__()
        self.decoder_embed = nn.Linear(enc_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        # the ViT's pre-norm block: LN eps 1e-6, qkv with bias, MLP ratio 4, exact GELU
        self.decoder_blocks = nn.ModuleList([Block(dim, heads) for _ in range(depth)])
        self.decoder_norm = nn.LayerNorm(dim, eps=1e-6)
        self.decoder_pred = nn.Linear(dim, patch * patch * channels)
        self.dim = dim
        with torch.no_grad():
            for name, prm in self.named_parameters():
                if name == "mask_token":
                    prm.normal_(0.0, 0.02)
                elif "norm" in name and name.endswith("weight"):
                    prm.copy_(1.0 + 0.1 * torch.randn_like(prm))
                else:  # linear weights and every bias
                    prm.normal_(0.0, 0.02)

    def forward(self, tokens, keep, n_patches):
        """tokens [B, 1+K, D_enc] ([CLS] first); keep [B, K] kept patch indices."""
        b = tokens.shape[0]
        x = self.decoder_embed(tokens)
        full = self.mask_token.expand(b, n_patches, self.dim).clone()
        full = full.scatter(1, keep.unsqueeze(-1).expand(-1, -1, self.dim), x[:, 1:])
        x = torch.cat([x[:, :1], full], dim=1)
        x = x + sincos_2d(self.dim, int(math.isqrt(n_patches)))
        for blk in self.decoder_blocks:
            x, _ = blk(x)
        x = self.decoder_pred(self.decoder_norm(x))
        return x[:, 1:]


def encode_all(vit, x, keep):
    """make_fixtures.ViT.forward, returning every token after the final LayerNorm."""
    b, _, s, _ = x.shape
    x = vit.patch_embed(x)
    pos = resize_pos(vit.pos_embed, s // vit.patch)
    x = x + pos[:, 1:]
    x = torch.gather(x, 1, keep.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
    cls = (vit.cls_token + pos[:, :1]).expand(b, -1, -1)
    x = torch.cat([cls, x], dim=1)
    for blk in vit.blocks:
        x, _ = blk(x)
    return vit.norm(x)


def mae_forward_fixture():
    vit = ViT()
    vit.load_state_dict(load_file(str(OUT / "vit_weights.safetensors")), strict=True)
    vit.eval()
    # the loaded encoder reproduces the committed vit_io fixture
    io = load_file(str(OUT / "vit_io.safetensors"))
    with torch.no_grad():
        cls, _ = vit(to_input(io["images96"]), io["keep96"])
        assert torch.allclose(cls, io["cls96_masked"], atol=1e-6)
        cls = encode_all(vit, to_input(io["images96"]), io["keep96"])[:, 0]
        assert torch.allclose(cls, io["cls96_masked"], atol=1e-6)

    decoder = MaeDecoder()
    decoder.eval()
    u8 = torch.randint(0, 256, (2, 3, 96, 96), dtype=torch.uint8)
    keep = random_keep(2, 36, 0.6)  # floor(36 * 0.4) = 14 kept
    assert keep.shape == (2, 14)
    mask = torch.ones(2, 36)
    mask.scatter_(1, keep, 0.0)  # 1 on the 22 removed patches
    imgs = to_input(u8)
    with torch.no_grad():
        tokens = encode_all(vit, imgs, keep)
        pred = decoder(tokens, keep, 36)
        loss = mae_loss(pred, patchify(imgs, 16), mask)
    write(
        "mae_decoder_weights.safetensors",
        {k: v.clone() for k, v in decoder.state_dict().items()},
    )
    return {
        "mae.forward.images": u8,
        "mae.forward.keep": keep,
        "mae.forward.pred": pred,
        "mae.forward.loss": loss.reshape(1),
    }


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    print(f"torch {torch.__version__}; writing to {OUT}")
    out = {}
    out.update(dino_head_fixture())
    out.update(dino_loss_fixture())
    out.update(mae_pos_fixture())
    out.update(mae_loss_fixture())
    out.update(mae_forward_fixture())
    write("baselines.safetensors", out)


if __name__ == "__main__":
    main()
