"""Downloads run for real against servers on 127.0.0.1 that these tests start."""
import hashlib
import io
import multiprocessing as mp
import os
import random

import pytest
import torch

from cityseg_zoo import WeightsUnavailableError, create_model
from cityseg_zoo.hub.download import HashMismatchError, cache_dir, fetch_weights
from loopback import FileServer, HubServer
from reference import manifest_entry, reference_state_dict, save_container, toy_weight, with_manifest_entries

PAYLOAD = random.Random(0).randbytes(300_000)  # the same bytes in spawned test processes


def _weight(sources, data=PAYLOAD, **extra):
    return toy_weight("toy_cityscapes", "toy.pth", data, sources, **extra)


def _cached_files():
    folder = cache_dir() / "weights"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_http_download_is_verified_and_cached_once():
    with FileServer({"toy.pth": PAYLOAD}) as server:
        weight = _weight([{"kind": "http", "url": f"{server.url}/toy.pth"}])
        path = fetch_weights(weight, progress=False)
        assert path.read_bytes() == PAYLOAD
        fetch_weights(weight, progress=False)
        assert server.requests == ["/toy.pth"]  # the second call is a verified cache hit


def test_connection_dropped_halfway_leaves_no_file():
    with FileServer({"toy.pth": PAYLOAD}, modes={"toy.pth": "drop_halfway"}) as server:
        with pytest.raises(WeightsUnavailableError, match="toy.pth"):
            fetch_weights(_weight([{"kind": "http", "url": f"{server.url}/toy.pth"}]), progress=False)
    assert [n for n in _cached_files() if not n.endswith(".lock")] == []


def test_server_error_falls_through_to_next_source():
    with FileServer({"toy.pth": PAYLOAD}, modes={"toy.pth": "error500"}) as broken, \
            FileServer({"toy.pth": PAYLOAD}) as good:
        weight = _weight([{"kind": "http", "url": f"{broken.url}/toy.pth"},
                          {"kind": "http", "url": f"{good.url}/toy.pth"}])
        assert fetch_weights(weight, progress=False).read_bytes() == PAYLOAD
        assert broken.requests and good.requests


def test_download_rejects_hash_mismatch():
    with FileServer({"toy.pth": PAYLOAD}, modes={"toy.pth": "wrong_bytes"}) as server:
        with pytest.raises(HashMismatchError, match="sha256"):
            fetch_weights(_weight([{"kind": "http", "url": f"{server.url}/toy.pth"}]), progress=False)
    assert [n for n in _cached_files() if not n.endswith(".lock")] == []


def test_google_drive_confirm_page_is_followed():
    with FileServer({"FILEID": PAYLOAD}, gdrive_confirm=True) as server:
        weight = _weight([{"kind": "google_drive", "id": "FILEID", "url": f"{server.url}/uc?id=FILEID"}])
        assert fetch_weights(weight, progress=False).read_bytes() == PAYLOAD
        assert any("confirm=t0ken" in r for r in server.requests)


def test_hugging_face_protocol_through_hf_hub_download(monkeypatch):
    with HubServer({("cityseg/toy", "toy.pth"): PAYLOAD}) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        weight = _weight([{"kind": "huggingface", "repo_id": "cityseg/toy", "filename": "toy.pth",
                           "revision": "main"}])
        assert fetch_weights(weight, progress=False).read_bytes() == PAYLOAD
        assert any(r.startswith("GET /cityseg/toy/resolve/") for r in hub.requests)


def test_corrupt_cache_file_is_downloaded_again():
    with FileServer({"toy.pth": PAYLOAD}) as server:
        weight = _weight([{"kind": "http", "url": f"{server.url}/toy.pth"}])
        path = fetch_weights(weight, progress=False)
        path.write_bytes(b"garbage")
        with pytest.warns(UserWarning, match="downloading it again"):
            assert fetch_weights(weight, progress=False).read_bytes() == PAYLOAD
        assert len(server.requests) == 2


def test_user_file_with_wrong_hash_is_reported_not_deleted(monkeypatch, tmp_path):
    (tmp_path / "toy.pth").write_bytes(b"user's own bytes")
    monkeypatch.setenv("CITYSEG_ZOO_WEIGHTS_DIR", str(tmp_path))
    with pytest.raises(HashMismatchError):
        fetch_weights(_weight([]), progress=False)
    assert (tmp_path / "toy.pth").read_bytes() == b"user's own bytes"


def test_offline_names_the_missing_file(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsUnavailableError, match=r"offline.*toy\.pth.*127\.0\.0\.1:9"):
        fetch_weights(_weight([{"kind": "http", "url": "http://127.0.0.1:9/toy.pth"}]), progress=False)


def test_local_mirror_folder_is_tried_first(tmp_path):
    (tmp_path / "toy.pth").write_bytes(PAYLOAD)
    weight = _weight([{"kind": "http", "url": "http://127.0.0.1:9/unreachable"}])
    assert fetch_weights(weight, mirror=str(tmp_path), progress=False).read_bytes() == PAYLOAD


def _fetch_in_child(url, cache, queue):
    os.environ["CITYSEG_ZOO_CACHE"] = cache
    path = fetch_weights(_weight([{"kind": "http", "url": url}]), progress=False)
    queue.put(hashlib.sha256(path.read_bytes()).hexdigest())


def test_concurrent_processes_download_one_good_file():
    ctx = mp.get_context("fork")  # children start at once; each takes its own file lock
    queue = ctx.Queue()
    with FileServer({"toy.pth": PAYLOAD}) as server:
        procs = [ctx.Process(target=_fetch_in_child, args=(f"{server.url}/toy.pth", str(cache_dir()), queue))
                 for _ in range(3)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        digests = [queue.get(timeout=5) for _ in procs]
        assert digests == [hashlib.sha256(PAYLOAD).hexdigest()] * 3
        assert server.requests == ["/toy.pth"]


def test_create_model_pretrained_true_downloads_and_loads(monkeypatch):
    buffer = io.BytesIO()
    state = reference_state_dict("fcn_ocnet_baseline_r101_original")
    torch.save(state, buffer)
    data = buffer.getvalue()
    with FileServer({"fcn.pth": data}) as server:
        with_manifest_entries(monkeypatch, manifest_entry(
            "fcn_r101_loopback", "fcn_r101", "fcn.pth", data, [{"kind": "http", "url": f"{server.url}/fcn.pth"}],
            layout="ocnet_baseline"))
        model = create_model("fcn_r101_loopback", pretrained=True)
    assert torch.equal(model.head.classifier.weight, state["layer6.weight"])
    assert model.pretrained_cfg["weights"] == "fcn_r101_loopback"
