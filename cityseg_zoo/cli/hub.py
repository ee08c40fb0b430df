"""``cityseg-zoo list | info | download | convert``: the model and weight catalogue, fetching and converting."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import CitysegZooError
from ..factory import locate_weights, model_info
from ..hub.download import where_to_get
from ..hub.weights import convert_file
from ..registry import arch_spec, list_models, resolve, weights_manifest
from ..specs import WeightSpec

INTEGRITY_STATUS = {
    "sha256": "full sha256 + size",
    "sha256_prefix": "publisher's hash prefix (unverified by us)",
    "trust_on_first_use": "none published: trust on first use",
    "unreleased": "never released",
}


def _source_summary(weight: WeightSpec) -> str:
    sources = weight.sources
    if not sources:
        return "—"
    first = sources[0]
    label = {"google_drive": "Google Drive", "http": "HTTP", "huggingface": "Hugging Face"}[first["kind"]]
    return label + (f" (+{len(sources) - 1})" if len(sources) > 1 else "")


def _miou(weight: WeightSpec) -> str:
    reported = weight.reported
    parts = [f"val {reported['val_miou']}" if "val_miou" in reported else "",
             f"val ms+flip {reported['val_ms_flip_miou']}" if "val_ms_flip_miou" in reported else "",
             f"test {reported['test_miou']}" if "test_miou" in reported else ""]
    return ", ".join(p for p in parts if p) or "—"


def weights_table(pattern: str = "*") -> str:
    """A Markdown table of every manifest entry matching ``pattern``: the README's weight table."""
    rows = ["| weight name | family | source | reported mIoU | hash |", "|---|---|---|---|---|"]
    for name in list_models(pattern, pretrained=True):
        w = weights_manifest()[name]
        rows.append(f"| `{name}` | {w.family} | {_source_summary(w)} | {_miou(w)} | "
                    f"{INTEGRITY_STATUS[w.integrity]} |")
    return "\n".join(rows)


def _list(args: argparse.Namespace) -> int:
    if args.markdown:
        print(weights_table(args.pattern))
        return 0
    manifest = weights_manifest()
    archs = set(list_models(args.pattern)) | {manifest[n].architecture
                                               for n in list_models(args.pattern, pretrained=True)}
    print(f"{'architecture':<26}weights")
    for arch in sorted(archs):
        weights = [w.name + ("" if w.released else " (unreleased)")
                   for w in manifest.values() if w.architecture == arch]
        print(f"{arch:<26}{', '.join(weights) or '-'}")
    return 0


def _info(args: argparse.Namespace) -> int:
    info = model_info(args.name)
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    cfg = info["pretrained_cfg"]
    print(f"{info['name']}: {info['description']}")
    print(f"  architecture   {info['architecture']}  ({info['params'] / 1e6:.1f} M parameters)")
    print(f"  reference      {cfg.get('reference', '')}")
    print(f"  input          {cfg['input']['channel_order']}, pixels/{cfg['input']['scale']:g}, "
          f"mean {list(cfg['input']['mean'])}, std {list(cfg['input']['std'])}")
    print(f"  align_corners  {cfg.get('align_corners')}")
    print(f"  classes        {len(cfg['classes'])}: {', '.join(cfg['classes'])}")
    print(f"  layouts        {', '.join(info['layouts']) or '-'} (+ native safetensors)")
    print(f"  weights        {', '.join(info['weights']) or 'none released'}")
    if cfg.get("weights"):
        _, weight = resolve(cfg["weights"])
        print(f"  source         {where_to_get(weight)}")
        print(f"  hash           {INTEGRITY_STATUS[weight.integrity]}")
        print(f"  eval protocol  {json.dumps(cfg['eval'])}")
        print(f"  reported       {_miou(weight)}" + (f"  ({weight.reported['note']})"
                                                     if 'note' in weight.reported else ""))
        print(f"  license        {weight.license}")
        if weight.terms:
            print(f"  terms          {weight.terms}")
        print(f"  citation       {weight.citation}")
        if weight.note:
            print(f"  note           {weight.note}")
    return 0


def _download(args: argparse.Namespace) -> int:
    failed = 0
    for name in args.names:
        try:
            _, weight = resolve(name)
            if weight is None:
                raise CitysegZooError(f"{name!r} is an architecture; give a weight name "
                                      f"(cityseg-zoo list {name}*)")
            path = locate_weights(arch_spec(name), weight, mirror=args.mirror, progress=not args.quiet,
                                  option="--weights ")
            print(f"{name}: {path}")
        except CitysegZooError as err:
            print(f"{name}: error: {err}")
            failed += 1
    return 1 if failed else 0


def _convert(args: argparse.Namespace) -> int:
    arch = arch_spec(args.arch)  # unknown names fail here with suggestions
    layouts = [lay for lay in arch.layouts if args.layout in (None, lay.name)]
    if not layouts and args.layout != "native":
        raise CitysegZooError(f"unknown layout {args.layout!r} for {arch.name}; it loads "
                              f"{[lay.name for lay in arch.layouts] + ['native']}")
    model_state = arch.builder(num_classes=args.num_classes or 19).state_dict()
    report = convert_file(args.input, args.out, layouts=layouts, model_state=model_state, name=arch.name,
                          metadata={"source_file": Path(args.input).name})
    print(f"{args.input} ({report.layout} layout) -> {args.out}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("list", help="architectures and their weights")
    p.add_argument("pattern", nargs="?", default="*", help="fnmatch pattern, e.g. 'dgcnet*'")
    p.add_argument("--markdown", action="store_true", help="print the weight table (name, family, source, "
                                                            "mIoU, hash status) as Markdown")
    p.set_defaults(run=_list)

    p = subparsers.add_parser("info", help="configuration, parameters, source and metrics of a name")
    p.add_argument("name")
    p.add_argument("--json", action="store_true", help="everything, as JSON")
    p.set_defaults(run=_info)

    p = subparsers.add_parser("download", help="fetch, verify and convert weights for offline use")
    p.add_argument("names", nargs="+", metavar="NAME", help="weight names, e.g. dgcnet_r101_cityscapes")
    p.add_argument("--mirror", help="base URL or folder tried first (default $CITYSEG_ZOO_MIRROR)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(run=_download)

    p = subparsers.add_parser("convert", help="convert a checkpoint of any supported layout to zoo safetensors")
    p.add_argument("input", help="checkpoint file (.pth/.pt/.tar/.safetensors)")
    p.add_argument("--arch", required=True, help="architecture name, e.g. danet_r101")
    p.add_argument("--out", required=True, help="output .safetensors file")
    p.add_argument("--layout", help="force one key layout (see `cityseg-zoo info ARCH`)")
    p.add_argument("--num-classes", type=int, help="classes of the checkpoint's classifier (default 19)")
    p.set_defaults(run=_convert)
