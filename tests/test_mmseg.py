"""mmsegmentation checkpoints load strictly, and the zoo computes what mmseg's code computes.

* Key sets: every key and shape of ``reference_keys("mmseg_<head>_r101")`` (the real R-101-D8 files, kept in
  ``tests/data``) maps one-to-one onto ``mmseg_<head>_r101`` through the "mmseg" layout.
* Maths: for each of the six heads, an R-50-D8 checkpoint (the R-101 key set without layer3 blocks 6-22, values
  from ``reference.fill_value``) is saved in mmseg's ``{'meta', 'state_dict'}`` container, loaded through
  ``create_model`` and compared with a functional transcription of mmseg 1.x written below, which reads the
  *mmseg-keyed* state dict directly: ``ResNetV1c`` (``mmseg/models/backbones/resnet.py``,
  ``contract_dilation=True``), the heads (``mmseg/models/decode_heads/{fcn,psp,aspp,sep_aspp,da,cc}_head.py``,
  ``mmseg/models/utils/self_attention_block.py``) and mmcv's pure-PyTorch ``CrissCrossAttention``
  (``mmcv/ops/cc_attention.py``). The reference uses no zoo module, so a wrong stem mapping, dilation, concat
  order or ``align_corners`` shows up; attention details that the logits dilute are checked on their own.
"""
from __future__ import annotations

import hashlib
import re

import pytest
import torch
import torch.nn.functional as F

import cityseg_zoo
from cityseg_zoo import CheckpointError
from cityseg_zoo.data.cityscapes import CLASS_NAMES
from cityseg_zoo.hub.convert import convert_state_dict
from cityseg_zoo.hub.download import HashMismatchError
from cityseg_zoo.models import mmseg as mmseg_models
from loopback import FileServer
from reference import (fill_value, manifest_entry, reference_keys, reference_state_dict, relative_error,
                       with_manifest_entries)

HEADS = ("fcn", "pspnet", "deeplabv3", "deeplabv3plus", "danet", "ccnet")
INPUT = (41, 49)   # odd and unequal: layer1 11x13, 1/8 features 6x7 (PSP's 6x6 bins overlap)
TOL = 1e-4


# ------------------------------------------------------------------------------ mmseg, transcribed functionally

def _bn(sd, p, x):
    return F.batch_norm(x, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd[f"{p}.weight"], sd[f"{p}.bias"],
                        False, 0.0, 1e-5)


def conv_module(sd, p, x, padding=0, dilation=1, groups=1):
    """mmcv ConvModule(norm_cfg=BN, act_cfg=ReLU): conv without bias -> BN -> ReLU."""
    x = F.conv2d(x, sd[f"{p}.conv.weight"], None, 1, padding, dilation, groups)
    return F.relu(_bn(sd, f"{p}.bn", x))


def ds_conv_module(sd, p, x, dilation=1):
    """mmcv DepthwiseSeparableConvModule(3x3): depthwise ConvModule then pointwise ConvModule."""
    x = conv_module(sd, f"{p}.depthwise_conv", x, padding=dilation, dilation=dilation, groups=x.shape[1])
    return conv_module(sd, f"{p}.pointwise_conv", x)


def up(x, size):
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def cls_seg(sd, p, x, name="conv_seg"):
    return F.conv2d(x, sd[f"{p}.{name}.weight"], sd[f"{p}.{name}.bias"])   # dropout is identity in eval


def resnet_v1c(sd, x):
    """mmseg ResNetV1c, strides (1, 2, 1, 1), dilations (1, 1, 2, 4), contract_dilation, style 'pytorch'."""
    p = "backbone"
    x = F.relu(_bn(sd, f"{p}.stem.1", F.conv2d(x, sd[f"{p}.stem.0.weight"], None, 2, 1)))
    x = F.relu(_bn(sd, f"{p}.stem.4", F.conv2d(x, sd[f"{p}.stem.3.weight"], None, 1, 1)))
    x = F.relu(_bn(sd, f"{p}.stem.7", F.conv2d(x, sd[f"{p}.stem.6.weight"], None, 1, 1)))
    x = F.max_pool2d(x, 3, 2, 1)
    outs = []
    for i, (stride, dilation) in enumerate(zip((1, 2, 1, 1), (1, 1, 2, 4)), start=1):
        n_blocks = len({k.split(".")[2] for k in sd if k.startswith(f"{p}.layer{i}.")})
        for j in range(n_blocks):
            b = f"{p}.layer{i}.{j}"
            s = stride if j == 0 else 1
            d = (dilation // 2 if dilation > 1 else dilation) if j == 0 else dilation   # contract_dilation
            out = F.relu(_bn(sd, f"{b}.bn1", F.conv2d(x, sd[f"{b}.conv1.weight"])))
            out = F.relu(_bn(sd, f"{b}.bn2", F.conv2d(out, sd[f"{b}.conv2.weight"], None, s, d, d)))
            out = _bn(sd, f"{b}.bn3", F.conv2d(out, sd[f"{b}.conv3.weight"]))
            identity = x
            if f"{b}.downsample.0.weight" in sd:
                identity = _bn(sd, f"{b}.downsample.1", F.conv2d(x, sd[f"{b}.downsample.0.weight"], None, s))
            x = F.relu(out + identity)
        outs.append(x)
    return outs


def fcn_head(sd, p, x, num_convs=2, concat_input=True):
    out = x
    for i in range(num_convs):
        out = conv_module(sd, f"{p}.convs.{i}", out, padding=1)
    if concat_input:
        out = conv_module(sd, f"{p}.conv_cat", torch.cat([x, out], dim=1), padding=1)
    return cls_seg(sd, p, out)


def psp_head(sd, p, x):
    outs = [x]
    for i, scale in enumerate((1, 2, 3, 6)):
        outs.append(up(conv_module(sd, f"{p}.psp_modules.{i}.1", F.adaptive_avg_pool2d(x, scale)), x.shape[2:]))
    return cls_seg(sd, p, conv_module(sd, f"{p}.bottleneck", torch.cat(outs, dim=1), padding=1))


def aspp_head(sd, p, x, dilations=(1, 12, 24, 36)):
    outs = [up(conv_module(sd, f"{p}.image_pool.1", F.adaptive_avg_pool2d(x, 1)), x.shape[2:])]
    for i, d in enumerate(dilations):
        outs.append(conv_module(sd, f"{p}.aspp_modules.{i}", x, padding=0 if d == 1 else d, dilation=d))
    return cls_seg(sd, p, conv_module(sd, f"{p}.bottleneck", torch.cat(outs, dim=1), padding=1))


def sep_aspp_head(sd, p, inputs, dilations=(1, 12, 24, 36)):
    x = inputs[3]
    outs = [up(conv_module(sd, f"{p}.image_pool.1", F.adaptive_avg_pool2d(x, 1)), x.shape[2:])]
    for i, d in enumerate(dilations):
        outs.append(conv_module(sd, f"{p}.aspp_modules.{i}", x) if d == 1
                    else ds_conv_module(sd, f"{p}.aspp_modules.{i}", x, dilation=d))
    output = conv_module(sd, f"{p}.bottleneck", torch.cat(outs, dim=1), padding=1)
    c1_output = conv_module(sd, f"{p}.c1_bottleneck", inputs[0])
    output = torch.cat([up(output, c1_output.shape[2:]), c1_output], dim=1)
    output = ds_conv_module(sd, f"{p}.sep_bottleneck.1", ds_conv_module(sd, f"{p}.sep_bottleneck.0", output))
    return cls_seg(sd, p, output)


def _conv(sd, p, x):
    return F.conv2d(x, sd[f"{p}.weight"], sd[f"{p}.bias"])


def pam(sd, p, x):
    """mmseg PAM = SelfAttentionBlock(query=x, key=x, no norm, no out projection, matmul_norm=False) + Scale."""
    batch_size = x.size(0)
    query = _conv(sd, f"{p}.query_project", x)
    query = query.reshape(*query.shape[:2], -1).permute(0, 2, 1).contiguous()
    key = _conv(sd, f"{p}.key_project", x)
    value = _conv(sd, f"{p}.value_project", x)
    key = key.reshape(*key.shape[:2], -1)
    value = value.reshape(*value.shape[:2], -1).permute(0, 2, 1).contiguous()
    sim_map = F.softmax(torch.matmul(query, key), dim=-1)
    context = torch.matmul(sim_map, value).permute(0, 2, 1).contiguous()
    context = context.reshape(batch_size, -1, *x.shape[2:])
    return context * sd[f"{p}.gamma.scale"] + x


def cam(sd, p, x):
    batch_size, channels, height, width = x.size()
    proj_query = x.view(batch_size, channels, -1)
    proj_key = x.view(batch_size, channels, -1).permute(0, 2, 1)
    energy = torch.bmm(proj_query, proj_key)
    energy_new = torch.max(energy, -1, keepdim=True)[0].expand_as(energy) - energy
    attention = F.softmax(energy_new, dim=-1)
    out = torch.bmm(attention, x.view(batch_size, channels, -1)).view(batch_size, channels, height, width)
    return out * sd[f"{p}.gamma.scale"] + x


def da_head(sd, p, x):
    """Returns (pam_cam_out, pam_out, cam_out) as mmseg's DAHead.forward."""
    pam_feat = conv_module(sd, f"{p}.pam_out_conv", pam(sd, f"{p}.pam", conv_module(sd, f"{p}.pam_in_conv", x, 1)), 1)
    cam_feat = conv_module(sd, f"{p}.cam_out_conv", cam(sd, f"{p}.cam", conv_module(sd, f"{p}.cam_in_conv", x, 1)), 1)
    return (cls_seg(sd, p, pam_feat + cam_feat), cls_seg(sd, p, pam_feat, "pam_conv_seg"),
            cls_seg(sd, p, cam_feat, "cam_conv_seg"))


def criss_cross_attention(sd, p, x):
    """mmcv.ops.CrissCrossAttention.forward (mmcv >= 1.3.13), verbatim."""
    B, C, H, W = x.size()
    query = _conv(sd, f"{p}.query_conv", x)
    key = _conv(sd, f"{p}.key_conv", x)
    value = _conv(sd, f"{p}.value_conv", x)
    neg_inf_diag = torch.diag(torch.tensor(float("-inf")).repeat(H), 0)
    energy_H = torch.einsum("bchw,bciw->bwhi", query, key) + neg_inf_diag
    energy_H = energy_H.transpose(1, 2)
    energy_W = torch.einsum("bchw,bchj->bhwj", query, key)
    attn = F.softmax(torch.cat([energy_H, energy_W], dim=-1), dim=-1)
    out = torch.einsum("bciw,bhwi->bchw", value, attn[..., :H])
    out += torch.einsum("bchj,bhwj->bchw", value, attn[..., H:])
    return out * sd[f"{p}.gamma.scale"] + x


def cc_head(sd, p, x, recurrence=2):
    output = conv_module(sd, f"{p}.convs.0", x, padding=1)
    for _ in range(recurrence):
        output = criss_cross_attention(sd, f"{p}.cca", output)
    output = conv_module(sd, f"{p}.convs.1", output, padding=1)
    output = conv_module(sd, f"{p}.conv_cat", torch.cat([x, output], dim=1), padding=1)
    return cls_seg(sd, p, output)


def mmseg_reference(head: str, sd: dict, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """EncoderDecoder in eval mode: every head's logits resized to the input size with align_corners=False."""
    feats = resnet_v1c(sd, x)
    extra = {}
    if head == "fcn":
        logits = fcn_head(sd, "decode_head", feats[3])
    elif head == "pspnet":
        logits = psp_head(sd, "decode_head", feats[3])
    elif head == "deeplabv3":
        logits = aspp_head(sd, "decode_head", feats[3])
    elif head == "deeplabv3plus":
        logits = sep_aspp_head(sd, "decode_head", feats)
    elif head == "danet":
        logits, extra["pam"], extra["cam"] = da_head(sd, "decode_head", feats[3])
    else:
        logits = cc_head(sd, "decode_head", feats[3])
    extra["aux"] = fcn_head(sd, "auxiliary_head", feats[2], num_convs=1, concat_input=False)
    return {"out": up(logits, x.shape[2:]), **{name: up(v, x.shape[2:]) for name, v in extra.items()}}


# ------------------------------------------------------------------------------ tests

def r50_state(head: str) -> dict[str, torch.Tensor]:
    """mmseg R-50-D8 checkpoint: the R-101-D8 key set of the spec with layer3 blocks 6..22 dropped.

    ResNetV1c-50 and -101 differ only in layer3's depth (6 vs 23 blocks); heads and every other key are shared.
    """
    return {k: v for k, v in reference_state_dict(f"mmseg_{head}_r101").items()
            if not re.match(r"backbone\.layer3\.([6-9]|1\d|2\d)\.", k)}


def save_mmseg_checkpoint(state: dict, path) -> str:
    meta = {"mmseg_version": "0.5.0", "CLASSES": list(CLASS_NAMES),
            "config": "model = dict(type='EncoderDecoder')"}
    torch.save({"meta": meta, "state_dict": state}, path)
    return str(path)


@pytest.mark.parametrize("head", HEADS)
def test_mmseg_r101_key_set_maps_strictly_onto_the_zoo_model(head):
    """Every key and shape of the real R-101-D8 checkpoint has exactly one zoo counterpart, and vice versa."""
    keys = reference_keys(f"mmseg_{head}_r101")
    state = {k: torch.empty(shape) for k, shape in keys.items()}
    with torch.device("meta"):
        model_state = cityseg_zoo.create_model(f"mmseg_{head}_r101").state_dict()
    (layout,) = cityseg_zoo.registry.arch_spec(f"mmseg_{head}_r101").layouts
    converted, report = convert_state_dict(state, layout, model_state)
    assert layout.name == "mmseg"
    assert report.ok, report.describe()
    assert len(converted) == len(keys) == len(model_state)


@pytest.mark.parametrize("head", HEADS)
def test_mmseg_checkpoint_loads_strictly_and_logits_follow_mmseg(head, tmp_path):
    state = r50_state(head)
    path = save_mmseg_checkpoint(state, tmp_path / f"{head}.pth")
    model = cityseg_zoo.create_model(f"mmseg_{head}_r50", pretrained=path).eval()
    assert model.pretrained_cfg["checkpoint"]["layout"] == "mmseg"
    assert model.pretrained_cfg["align_corners"] is False
    # The stem mapping is value-exact (the functional reference below checks it mathematically too).
    assert torch.equal(model.backbone.bn1.running_var, state["backbone.stem.7.running_var"])

    torch.manual_seed(0)
    x = torch.randn(1, 3, *INPUT)
    with torch.no_grad():
        expected = mmseg_reference(head, state, x)
        out = model(x)
        # Train-mode contract with BN statistics and dropout frozen: the auxiliary (and DANet's PAM / CAM)
        # logits, resized to the input like the main ones.
        model.train()
        for module in model.modules():
            if module not in (model, model.head):
                module.eval()
        train_out = model(x)
    assert out.shape == (1, 19, *INPUT)
    err = relative_error(out, expected["out"])
    assert err <= TOL, f"{head}: relative error {err:.2e}"
    assert set(train_out) == {"out", "aux"} | ({"pam", "cam"} if head == "danet" else set())
    for name, logits in train_out.items():
        assert relative_error(logits, expected[name]) <= TOL, name


@pytest.mark.parametrize("module, reference", [
    (lambda: mmseg_models.PAM(512, 64), pam),
    (lambda: mmseg_models.CAM(), cam),
    (lambda: mmseg_models.CrissCrossAttention(512), criss_cross_attention),
], ids=["pam", "cam", "criss_cross"])
def test_mmseg_attention_increment_follows_mmseg(module, reference):
    """The attention term alone (``out - x`` with gamma = 1), where the whole-model comparison dilutes it.

    Catches what the logits barely see: a 1/sqrt(d) scaling in PAM (relative change ~0.4 here), or a
    criss-cross without mmcv's -inf on the column diagonal (~0.09 here).
    """
    attention = module().eval()
    state = {f"m.{k}": fill_value(f"m.{k}", v.shape) for k, v in attention.state_dict().items()}
    state["m.gamma.scale"] = torch.tensor(1.0)
    attention.load_state_dict({k[len("m."):]: v for k, v in state.items()})
    torch.manual_seed(0)
    x = torch.relu(torch.randn(2, 512, 6, 7))
    with torch.no_grad():
        err = relative_error(attention(x) - x, reference(state, "m", x) - x)
    assert err <= 1e-5, err


@pytest.fixture(scope="module")
def fcn_state():
    return r50_state("fcn")


def test_mmseg_checkpoint_with_wrong_shape_names_the_key(tmp_path, fcn_state):
    state = dict(fcn_state)
    state["decode_head.conv_seg.weight"] = torch.zeros(21, 512, 1, 1)
    path = save_mmseg_checkpoint(state, tmp_path / "bad_shape.pth")
    with pytest.raises(CheckpointError, match=r"decode_head\.conv_seg\.weight: checkpoint \(21, 512, 1, 1\)"):
        cityseg_zoo.create_model("mmseg_fcn_r50", pretrained=path)


def test_mmseg_checkpoint_with_missing_key_names_it(tmp_path, fcn_state):
    state = {k: v for k, v in fcn_state.items() if k != "auxiliary_head.convs.0.bn.running_var"}
    path = save_mmseg_checkpoint(state, tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match=r"missing in checkpoint: aux_head\.convs\.0\.bn\.running_var"):
        cityseg_zoo.create_model("mmseg_fcn_r50", pretrained=path)


def test_mmseg_checkpoint_with_unknown_key_names_it(tmp_path, fcn_state):
    state = dict(fcn_state)
    state["decode_head.extra.weight"] = torch.zeros(3)
    path = save_mmseg_checkpoint(state, tmp_path / "extra.pth")
    with pytest.raises(CheckpointError, match=r"unexpected in checkpoint: decode_head\.extra\.weight"):
        cityseg_zoo.create_model("mmseg_fcn_r50", pretrained=path)


def _serve_mmseg_weight(monkeypatch, server: FileServer, filename: str, data: bytes, prefix: str) -> None:
    """Register an mmseg-style entry: the original URL first (dead: 404), then a mirror holding the file named
    ``..._<prefix>.pth``."""
    server.files[f"mirror/{filename}"] = data
    sources = [{"kind": "http", "url": f"{server.url}/mmsegmentation/v0.5/fcn/{filename}"},
               {"kind": "http", "url": f"{server.url}/mirror/{filename}", "note": "mirror"}]
    with_manifest_entries(monkeypatch, manifest_entry(
        "mmseg_fcn_r50_loopback", "mmseg_fcn_r50", filename, data, sources, layout="mmseg", family="mmseg",
        container="mmseg", integrity="sha256_prefix", sha256=None, size=None, sha256_prefix=prefix))


def test_mmseg_weights_come_from_a_mirror_when_the_host_is_gone(monkeypatch, tmp_path, fcn_state):
    data = open(save_mmseg_checkpoint(fcn_state, tmp_path / "upload.pth"), "rb").read()
    prefix = hashlib.sha256(data).hexdigest()[:8]
    with FileServer({}) as server:
        _serve_mmseg_weight(monkeypatch, server, f"fcn_r50-d8_512x1024_80k_cityscapes_20200606_113019-{prefix}.pth",
                            data, prefix)
        model = cityseg_zoo.create_model("mmseg_fcn_r50_loopback", pretrained=True)
    assert server.requests[0].startswith("/mmsegmentation/") and server.requests[-1].startswith("/mirror/")
    assert torch.equal(model.head.conv_cat.conv.weight, fcn_state["decode_head.conv_cat.conv.weight"])
    assert torch.equal(model.backbone.conv1[0].weight, fcn_state["backbone.stem.0.weight"])
    assert model.pretrained_cfg["weights"] == "mmseg_fcn_r50_loopback"


def test_mmseg_file_whose_name_suffix_is_not_its_sha256_prefix_is_refused(monkeypatch):
    """mmseg never checked its suffixes; the zoo does, before anything is unpickled."""
    data = b"not the published file" * 50
    with FileServer({}) as server:
        _serve_mmseg_weight(monkeypatch, server, "fcn_r50-d8_512x1024_80k_cityscapes_20200606_113019-0badc0de.pth",
                            data, "0badc0de")
        with pytest.raises(HashMismatchError, match="0badc0de"):
            cityseg_zoo.create_model("mmseg_fcn_r50_loopback", pretrained=True)


def test_mmseg_models_record_mmseg_input_normalisation():
    cfg = cityseg_zoo.model_info("mmseg_danet_r101")["pretrained_cfg"]
    assert cfg["input"] == {"channel_order": "RGB", "scale": 1.0, "mean": (123.675, 116.28, 103.53),
                            "std": (58.395, 57.12, 57.375)}
    assert cfg["align_corners"] is False and cfg["family"] == "mmseg"
