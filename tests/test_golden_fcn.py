from reference import check_golden


def test_fcn_matches_ocnet_baseline_reference_logits(tmp_path):
    err = check_golden("fcn_r101", "fcn_ocnet_baseline_r101_original", "bare", tmp_path)
    assert err <= 1e-4, err
