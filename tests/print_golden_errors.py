"""Print the relative error of every golden comparison: python tests/print_golden_errors.py"""
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from reference import check_golden  # noqa: E402

CASES = [("fcn_r101", "fcn_ocnet_baseline_r101_original", "bare", "lowres", {}),
         ("galdnet_r101", "gald_r101_original", "bare", "lowres", {}),
         ("dgcnet_r101", "dgcnet_r101_original", "bare", "lowres", {}),
         ("pspnet_r101", "pspnet_r101_original", "bare", "lowres", {}),
         ("deeplabv3_r101", "deeplabv3_r101_original", "bare", "lowres", {}),
         ("ocnet_base_r101", "ocnet_base_oc_r101_original", "bare", "lowres", {"aliases": {"f_query": "f_key"}}),
         ("ocnet_asp_r101", "ocnet_asp_oc_r101_original", "bare", "lowres", {"aliases": {"f_query": "f_key"}}),
         ("ccnet_r101", "ccnet_r101_original", "bare", "lowres", {"recurrence": 2}),
         ("danet_r101", "danet_r101_original", "state_dict", "forward", {}),
         ("gffnet_wrn38", "gffnet_wrn38_original", "module", "forward", {}),
         ("deeplabv3plus_r101", "deeplabv3plus_original", "module", "forward", {})]
for arch, golden, container, output, kw in CASES:
    err = check_golden(arch, golden, container, Path(tempfile.mkdtemp()), output=output, **kw)
    print(f"{golden:38s} {arch:20s} {err:.1e}")
