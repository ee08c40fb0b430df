"""torch.hub entry points: one per registered architecture and weight name.

    model = torch.hub.load("<repo or local dir>", "dgcnet_r101", source="local")
    model = torch.hub.load(..., "dgcnet_r101_cityscapes", pretrained=True)
"""
dependencies = ["torch", "timm", "safetensors", "huggingface_hub", "numpy"]

import cityseg_zoo as _zoo  # noqa: E402


def _entry(name: str):
    info_doc = _zoo.registry.arch_spec(name).doc

    def hub_entry(pretrained=False, **kwargs):
        return _zoo.create_model(name, pretrained=pretrained, **kwargs)

    hub_entry.__name__ = name
    hub_entry.__doc__ = (f"{info_doc}\n\n" if info_doc else "") + (
        f"torch.hub entry for cityseg_zoo.create_model({name!r}, pretrained=..., num_classes=..., **kwargs).")
    return hub_entry


for _name in _zoo.list_models() + _zoo.list_pretrained():
    globals()[_name] = _entry(_name)
del _name
