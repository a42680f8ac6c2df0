"""The in-memory Hub (`tests/hubserver.py`) carries the real clients.

Each client scenario runs in a subprocess: `huggingface_hub` reads `HF_ENDPOINT` when it is
imported, and this test process may already have imported it. A scenario script prints one
JSON line last; `run_client` returns it parsed.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from hubserver import HubServer, hub_env  # noqa: E402

THRESHOLD = 1024  # bytes: smaller files are committed inline, larger ones go over LFS


@pytest.fixture
def hub() -> Iterator[HubServer]:
    with HubServer(lfs_threshold=THRESHOLD) as server:
        yield server


def client_env(server: HubServer, tmp_path: Path) -> dict[str, str]:
    return {**os.environ, **hub_env(server, tmp_path), "WORK": str(tmp_path)}


def run_client(server: HubServer, tmp_path: Path, script: str, timeout: float = 120) -> Any:
    """Run `script` in a fresh interpreter pointed at `server`; return its last stdout line as JSON."""
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        env=client_env(server, tmp_path),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"client failed:\n{proc.stdout}\n{proc.stderr[-4000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def routes_called(server: HubServer) -> list[str]:
    """`METHOD path` of every request so far, query strings dropped."""
    return [f"{method} {path.split('?')[0]}" for method, path, _ in server.requests]


# ---------------------------------------------------------------------------------------------
# The server on its own (in-process, no client library)
# ---------------------------------------------------------------------------------------------


def test_keep_alive_survives_error_answers_and_chunked_bodies(hub: HubServer) -> None:
    """An error answer still consumes the body, so the next request on the same connection works."""
    conn = http.client.HTTPConnection("127.0.0.1", int(hub.url.rsplit(":", 1)[1]), timeout=5)
    conn.request("POST", "/api/nowhere", body=b"x" * 5000, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 404 and json.loads(resp.read())["error"]
    conn.request("POST", "/api/repos/create", body=iter([b'{"name": "m", ', b'"organization": "org"}']),
                 headers={"Authorization": "Bearer t", "Transfer-Encoding": "chunked"}, encode_chunked=True)  # fmt: skip
    resp = conn.getresponse()
    assert resp.status == 200, resp.read()
    assert json.loads(resp.read())["url"] == f"{hub.url}/org/m"
    conn.request("GET", "/api/whoami-v2")  # no token
    resp = conn.getresponse()
    assert resp.status == 401 and resp.read()
    conn.close()


def test_resolve_headers_and_ranges(hub: HubServer) -> None:
    """Downloads carry the headers the client needs; LFS files also the linked etag/size."""
    payload = bytes(range(256)) * 8  # 2 KiB: LFS
    commit = hub.seed("org/m", {"w.bin": payload, "a.txt": "hi"})
    conn = http.client.HTTPConnection("127.0.0.1", int(hub.url.rsplit(":", 1)[1]), timeout=5)
    conn.request("HEAD", "/org/m/resolve/main/w.bin")
    resp = conn.getresponse()
    resp.read()
    assert resp.status == 200
    assert resp.headers["X-Repo-Commit"] == commit.oid
    assert resp.headers["X-Linked-Etag"] == f'"{hashlib.sha256(payload).hexdigest()}"'
    assert resp.headers["X-Linked-Size"] == resp.headers["Content-Length"] == str(len(payload))
    conn.request("GET", f"/org/m/resolve/{commit.oid}/w.bin", headers={"Range": "bytes=10-19"})
    resp = conn.getresponse()
    assert (resp.status, resp.read(), resp.headers["Content-Range"]) == (
        206,
        payload[10:20],
        "bytes 10-19/2048",
    )
    conn.request("HEAD", "/org/m/resolve/main/a.txt")
    resp = conn.getresponse()
    resp.read()
    assert (
        "X-Linked-Etag" not in resp.headers
        and resp.headers["ETag"].strip('"') == hub.files("org/m")["a.txt"].oid
    )
    conn.request("HEAD", "/org/m/resolve/main/missing.txt")
    resp = conn.getresponse()
    resp.read()
    assert (resp.status, resp.headers["X-Error-Code"], resp.headers["X-Repo-Commit"]) == (
        404,
        "EntryNotFound",
        commit.oid,
    )
    conn.close()


def test_commit_is_all_or_nothing(hub: HubServer) -> None:
    """A commit with one bad line changes nothing; a good one moves main to a new 40-hex id."""
    before = hub.seed("org/c", {"keep/a.txt": "a", "keep/b.txt": "b", "x.txt": "x"})
    conn = http.client.HTTPConnection("127.0.0.1", int(hub.url.rsplit(":", 1)[1]), timeout=5)

    def commit(*ops: dict[str, Any], parent: str | None = None) -> tuple[int, dict[str, Any]]:
        header = {"key": "header", "value": {"summary": "s", "description": "", "parentCommit": parent}}
        body = b"".join(json.dumps(line).encode() + b"\n" for line in [header, *ops])
        conn.request(
            "POST", "/api/models/org/c/commit/main", body=body, headers={"Authorization": "Bearer t"}
        )
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())

    add = {"key": "file", "value": {"path": "new.txt", "content": "bmV3", "encoding": "base64"}}
    assert commit(add, {"key": "lfsFile", "value": {"path": "w.bin", "oid": "0" * 64}})[0] == 422
    assert commit(add, {"key": "deletedFile", "value": {"path": "missing.txt"}})[0] == 404
    assert commit(add, parent="f" * 40)[0] == 412
    assert hub.repo("org/c").branches["main"] == before.oid and hub.errors == []
    status, answer = commit(add, {"key": "deletedFolder", "value": {"path": "keep"}}, parent=before.oid)
    assert status == 200 and re.fullmatch(r"[0-9a-f]{40}", answer["commitOid"])
    assert hub.repo("org/c").branches["main"] == answer["commitOid"] != before.oid
    assert sorted(hub.repos["org/c"]) == [".gitattributes", "new.txt", "x.txt"]
    assert hub.repos["org/c"]["new.txt"] == b"new"
    assert set(hub.files("org/c", revision=before.oid)) == {
        ".gitattributes",
        "keep/a.txt",
        "keep/b.txt",
        "x.txt",
    }
    conn.close()


# ---------------------------------------------------------------------------------------------
# The real huggingface_hub client
# ---------------------------------------------------------------------------------------------


def test_create_repo_and_exist_ok(hub: HubServer, tmp_path: Path) -> None:
    out = run_client(
        hub,
        tmp_path,
        """
        import json
        from huggingface_hub import HfApi
        from huggingface_hub.errors import HfHubHTTPError
        api = HfApi()
        first = api.create_repo("org/model-a")
        try:
            api.create_repo("org/model-a")
            again = None
        except HfHubHTTPError as e:
            again = [type(e).__name__, e.response.status_code]
        ok = api.create_repo("org/model-a", exist_ok=True)
        mine = api.create_repo("no-namespace")  # goes to the token's account
        ds = api.create_repo("org/data-a", repo_type="dataset")
        print(json.dumps({"first": first.repo_id, "again": again, "ok": ok.repo_id, "mine": mine.repo_id,
                          "ds": [ds.repo_id, ds.repo_type], "user": api.whoami()["name"]}))
    """,
    )
    assert out == {"first": "org/model-a", "again": ["HfHubHTTPError", 409], "ok": "org/model-a",
                   "mine": "hub-tester/no-namespace", "ds": ["org/data-a", "dataset"], "user": "hub-tester"}  # fmt: skip
    assert set(hub.repos) == {"org/model-a", "hub-tester/no-namespace", "datasets/org/data-a"}
    assert list(hub.repos["org/model-a"]) == [".gitattributes"]  # the Hub's initial commit


def test_upload_folder_sends_small_files_inline_and_big_ones_over_lfs(hub: HubServer, tmp_path: Path) -> None:
    folder = tmp_path / "folder"
    (folder / "weights").mkdir(parents=True)
    (folder / "notes.txt").write_text("small text file\n")
    big = os.urandom(4 * THRESHOLD)
    (folder / "weights" / "blob.dat").write_bytes(big)
    out = run_client(
        hub,
        tmp_path,
        """
        import json, os
        from huggingface_hub import HfApi
        api = HfApi()
        api.create_repo("org/up", exist_ok=True)
        info = api.upload_folder(repo_id="org/up", folder_path=os.path.join(os.environ["WORK"], "folder"))
        print(json.dumps({"oid": info.oid, "files": api.list_repo_files("org/up")}))
    """,
    )
    assert out["files"] == [".gitattributes", "notes.txt", "weights/blob.dat"]
    blobs = hub.files("org/up")
    assert (blobs["notes.txt"].lfs, blobs["weights/blob.dat"].lfs) == (False, True)
    assert blobs["weights/blob.dat"].data == big and blobs["notes.txt"].data == b"small text file\n"
    assert hub.repo("org/up").branches["main"] == out["oid"]
    calls = routes_called(hub)
    sha = hashlib.sha256(big).hexdigest()
    for call in ["POST /api/models/org/up/preupload/main", "POST /org/up.git/info/lfs/objects/batch",
                 f"PUT /_lfs/models/org/up/{sha}", f"POST /_lfs/models/org/up/{sha}/verify",
                 "POST /api/models/org/up/commit/main"]:  # fmt: skip
        assert call in calls
    assert calls.index(f"PUT /_lfs/models/org/up/{sha}") < calls.index("POST /api/models/org/up/commit/main")


def test_download_into_empty_cache_returns_identical_bytes(hub: HubServer, tmp_path: Path) -> None:
    files = {"config.json": b'{"a": 1}', "sub dir/weights.bin": os.urandom(3 * THRESHOLD)}
    commit = hub.seed("org/dl", files)
    out = run_client(
        hub,
        tmp_path,
        """
        import json, os
        from huggingface_hub import hf_hub_download, snapshot_download
        cache = os.environ["HF_HUB_CACHE"]
        assert not os.path.exists(cache) or not os.listdir(cache)
        paths = {f: hf_hub_download("org/dl", f) for f in ["config.json", "sub dir/weights.bin"]}
        snap = snapshot_download("org/dl")
        print(json.dumps({"paths": paths, "snap": snap}))
    """,
    )
    for name, data in files.items():
        assert Path(out["paths"][name]).read_bytes() == data
        assert (Path(out["snap"]) / name).read_bytes() == data
    assert Path(out["snap"]).name == commit.oid  # cached under the commit the server reported


def test_list_repo_files_and_tree(hub: HubServer, tmp_path: Path) -> None:
    hub.seed("org/ls", {"README.md": "# hi", "a/b/c.txt": "c", "a/d.txt": "d"})
    hub.seed("org/ls", {"a/e.txt": "e"}, message="second")
    out = run_client(
        hub,
        tmp_path,
        """
        import json
        from huggingface_hub import HfApi
        api = HfApi()
        top = sorted(e.path for e in api.list_repo_tree("org/ls", path_in_repo="a"))
        last = {e.path: e.last_commit.title for e in api.list_repo_tree("org/ls", "a", recursive=True, expand=True)
                if hasattr(e, "size")}
        print(json.dumps({"files": api.list_repo_files("org/ls"), "top": top, "last": last,
                          "exists": [api.file_exists("org/ls", "a/d.txt"), api.file_exists("org/ls", "nope")]}))
    """,
    )
    assert out["files"] == [".gitattributes", "README.md", "a/b/c.txt", "a/d.txt", "a/e.txt"]
    assert out["top"] == ["a/b", "a/d.txt", "a/e.txt"]
    assert out["last"] == {"a/b/c.txt": "Seed files", "a/d.txt": "Seed files", "a/e.txt": "second"}
    assert out["exists"] == [True, False]


def test_model_card_round_trip_with_model_index(hub: HubServer, tmp_path: Path) -> None:
    out = run_client(
        hub,
        tmp_path,
        """
        import json
        from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData
        HfApi().create_repo("org/card")
        data = ModelCardData(
            model_name="card", license="apache-2.0", library_name="timm",
            eval_results=[EvalResult(task_type="image-classification", dataset_type="cifar10-lt",
                                     dataset_name="CIFAR-10-LT", metric_type="accuracy", metric_value=0.8125,
                                     metric_name="Top-1 (all)")],
            ltreg={"method": "ce", "imbalance_ratio": 100},
        )
        ModelCard.from_template(data, model_description="A test card.").push_to_hub("org/card")
        card = ModelCard.load("org/card")
        r = card.data.eval_results[0]
        print(json.dumps({"metric": [r.metric_type, r.metric_value, r.dataset_type, r.task_type],
                          "ltreg": card.data.to_dict().get("ltreg"), "text": "A test card." in card.text}))
    """,
    )
    assert out == {"metric": ["accuracy", 0.8125, "cifar10-lt", "image-classification"],
                   "ltreg": {"method": "ce", "imbalance_ratio": 100}, "text": True}  # fmt: skip
    readme = hub.repos["org/card"]["README.md"].decode()
    assert "model-index:" in readme and "ltreg:" in readme
    assert "POST /api/validate-yaml" in routes_called(hub)


def test_timm_push_to_hub_and_create_model_from_hf_hub(hub: HubServer, tmp_path: Path) -> None:
    out = run_client(
        hub,
        tmp_path,
        """
        import json, timm, torch
        from timm.models import push_to_hf_hub
        torch.manual_seed(0)
        model = timm.create_model("test_resnet", num_classes=7).eval()
        push_to_hf_hub(model, "org/tiny-resnet", safe_serialization=True,
                       model_config={"label_names": [f"c{i}" for i in range(7)]})
        loaded = timm.create_model("hf-hub:org/tiny-resnet", pretrained=True).eval()
        x = torch.randn(2, 3, 64, 64)
        with torch.no_grad():
            same = torch.equal(model(x), loaded(x))
        a, b = model.state_dict(), loaded.state_dict()
        print(json.dumps({"same_out": same, "same_sd": a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a),
                          "classes": loaded.num_classes, "labels": loaded.pretrained_cfg.get("label_names")}))
    """,
    )
    assert out == {"same_out": True, "same_sd": True, "classes": 7, "labels": [f"c{i}" for i in range(7)]}
    blobs = hub.files("org/tiny-resnet")
    assert {"config.json", "model.safetensors", "README.md"} <= set(blobs)
    assert "pytorch_model.bin" not in blobs and blobs["model.safetensors"].lfs
    assert json.loads(blobs["config.json"].data)["architecture"] == "test_resnet"


def test_dataset_push_to_hub_and_load_dataset(hub: HubServer, tmp_path: Path) -> None:
    out = run_client(
        hub,
        tmp_path,
        """
        import json, datasets
        ds = datasets.Dataset.from_dict({"x": list(range(20)), "label": [i % 3 for i in range(20)]})
        ds.push_to_hub("org/tiny-ds", split="train")
        ds.select(range(5)).push_to_hub("org/tiny-ds", split="test")
        back = datasets.load_dataset("org/tiny-ds")
        print(json.dumps({"train": back["train"].to_dict() == ds.to_dict(),
                          "test": list(back["test"]["x"]), "splits": sorted(back)}))
    """,
        timeout=180,
    )
    assert out == {"train": True, "test": [0, 1, 2, 3, 4], "splits": ["test", "train"]}
    files = hub.repos["datasets/org/tiny-ds"]
    shards = sorted(p for p in files if p.endswith(".parquet"))
    assert shards == ["data/test-00000-of-00001.parquet", "data/train-00000-of-00001.parquet"]
    assert all(hub.files("org/tiny-ds", "dataset")[p].lfs for p in shards)


# ---------------------------------------------------------------------------------------------
# Failures mid-push: the client raises, main keeps its last good state
# ---------------------------------------------------------------------------------------------

PUSH_AND_REPORT = """
    import json, os
    from huggingface_hub import HfApi
    api = HfApi()
    try:
        api.upload_folder(repo_id="org/safe", folder_path=os.path.join(os.environ["WORK"], "v2"))
        err = None
    except Exception as e:
        err = {"type": type(e).__name__, "mro": [c.__name__ for c in type(e).__mro__],
               "status": getattr(getattr(e, "response", None), "status_code", None)}
    print(json.dumps(err))
"""


def _write_v2(tmp_path: Path) -> bytes:
    (tmp_path / "v2").mkdir()
    (tmp_path / "v2" / "notes.txt").write_text("v2")
    big = os.urandom(2 * THRESHOLD)
    (tmp_path / "v2" / "big.dat").write_bytes(big)
    return big


@pytest.mark.parametrize(
    ("failure", "expected"),
    [
        (True, ("HfHubHTTPError", 500)),
        (503, ("HfHubHTTPError", 503)),
        ("disconnect", ("RemoteProtocolError", None)),
    ],
)
def test_failed_commit_raises_and_leaves_main_untouched(
    hub: HubServer, tmp_path: Path, failure: bool | int | str, expected: tuple[str, int | None]
) -> None:
    before = hub.seed("org/safe", {"notes.txt": "v1"})
    big = _write_v2(tmp_path)
    hub.fail_next_commit = failure
    err = run_client(hub, tmp_path, PUSH_AND_REPORT)
    assert (err["type"], err["status"]) == expected
    if expected[1] is not None:
        assert "HfHubHTTPError" in err["mro"]
    assert not hub.fail_next_commit  # the failure was used up
    assert hub.repo("org/safe").branches == {"main": before.oid}
    assert hub.repos["org/safe"] == {
        ".gitattributes": before.files[".gitattributes"].data,
        "notes.txt": b"v1",
    }
    assert hashlib.sha256(big).hexdigest() in hub.repo("org/safe").lfs_objects  # uploaded, not committed
    # The same push goes through once the server behaves (the LFS object is not sent again).
    assert run_client(hub, tmp_path, PUSH_AND_REPORT) is None
    assert hub.repos["org/safe"]["big.dat"] == big and hub.repos["org/safe"]["notes.txt"] == b"v2"
    assert sum(m == "PUT" for m, _, _ in hub.requests) == 1


def test_server_stopped_between_preupload_and_commit(hub: HubServer, tmp_path: Path) -> None:
    before = hub.seed("org/safe", {"notes.txt": "v1"})
    big = _write_v2(tmp_path)
    script = textwrap.dedent("""
        import json, os, sys
        from huggingface_hub import CommitOperationAdd, HfApi
        api = HfApi()
        work = os.path.join(os.environ["WORK"], "v2")
        ops = [CommitOperationAdd(name, os.path.join(work, name)) for name in ["notes.txt", "big.dat"]]
        api.preupload_lfs_files("org/safe", additions=ops)
        print("preuploaded", flush=True)
        sys.stdin.readline()  # the test stops the server meanwhile
        try:
            api.create_commit("org/safe", operations=ops, commit_message="v2")
            err = None
        except Exception as e:
            err = type(e).__name__
        print(json.dumps(err))
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], env=client_env(hub, tmp_path), text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "preuploaded"
        hub.stop()
        out, errs = proc.communicate("go\n", timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, errs[-3000:]
    assert json.loads(out.strip().splitlines()[-1]) == "ConnectError"
    hub.start()  # same port, same state
    assert hub.repo("org/safe").branches == {"main": before.oid}
    assert "big.dat" not in hub.repos["org/safe"]
    assert hub.repo("org/safe").lfs_objects[hashlib.sha256(big).hexdigest()] == big
