"""models.storage: a local workspace is the folder itself (no copy, no sync record); a remote one publishes folders
whole (manifest last, hashes checked on pull) or merges the caches file by file; bad URLs, options, credentials,
endpoints and buckets are refused naming what to fix; an interrupted push leaves nothing a reader takes as complete."""

import json
import socket
import time

import fsspec
import pytest

from models.storage import MANIFEST_NAME, Unit, WorkingCopy, WorkspaceStorageError, open_store
from models.workspace import Workspace
from pipelines.resources import PromptLabResource


def write(root, relative, text):
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def machine(bucket, tmp_path, name, wait_seconds=60.0):
    """A working copy of s3://<bucket>/ws in a folder of its own: one machine."""
    return WorkingCopy(open_store(f"s3://{bucket}/ws"), tmp_path / name, wait_seconds=wait_seconds)


def objects(bucket):
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    return {name.split("/ws/", 1)[1]: fs.cat_file(name) for name in fs.find(f"{bucket}/ws")}


# ------------------------------------------------------------------------------------------------ local default
def test_a_local_workspace_is_its_folder_and_never_copies(tmp_path, monkeypatch):
    monkeypatch.setenv("PROMPTLAB_WORKSPACE", str(tmp_path / "ws"))
    workspace = PromptLabResource().workspace()
    assert workspace == Workspace(tmp_path / "ws") and not workspace.is_remote
    write(workspace.root, "curation/Shapes/index.parquet", "x")
    assert workspace.pull([workspace.curation_dir("Shapes")]).files == 0
    assert workspace.push([workspace.curation_dir("Shapes")]).files == 0
    assert sorted(p.relative_to(workspace.root).as_posix() for p in workspace.root.rglob("*")) == [
        "curation", "curation/Shapes", "curation/Shapes/index.parquet"]  # no record, no manifest, no copy
    assert Workspace.at(f"file://{tmp_path}/other") == Workspace(tmp_path / "other")
    assert workspace.is_published(workspace.curation_dir("Shapes"))


def test_bad_locations_and_options_are_refused_by_name(tmp_path, monkeypatch):
    with pytest.raises(WorkspaceStorageError, match=r"PROMPTLAB_WORKSPACE=nosuch://b/ws: unknown storage scheme"):
        Workspace.at("nosuch://b/ws")
    with pytest.raises(WorkspaceStorageError, match="workspace_dir=nosuch://b: unknown storage scheme 'nosuch'"):
        PromptLabResource(workspace_dir="nosuch://b").workspace()
    monkeypatch.setenv("PROMPTLAB_WORKSPACE_OPTIONS", "{not json")
    with pytest.raises(WorkspaceStorageError, match=r"\$PROMPTLAB_WORKSPACE_OPTIONS .*s3://b/ws.* is not JSON"):
        open_store("s3://b/ws")


def test_a_remote_workspace_computes_in_its_working_copy(tmp_path, monkeypatch):
    monkeypatch.setenv("PROMPTLAB_WORKSPACE", "s3://bucket/ws/")
    monkeypatch.setenv("PROMPTLAB_WORKSPACE_CACHE", str(tmp_path / "copy"))
    workspace = PromptLabResource().workspace()
    assert workspace.is_remote and workspace.location == "s3://bucket/ws" and workspace.root == tmp_path / "copy"
    assert workspace.unit(workspace.experiment_dir("Shapes", "coop")) == Unit("experiments/Shapes/coop")
    assert workspace.unit(workspace.feature_cache_dir / "text").additive
    monkeypatch.delenv("PROMPTLAB_WORKSPACE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert PromptLabResource().workspace().root.parent == tmp_path / "xdg" / "promptlab" / "workspaces"


# --------------------------------------------------------------------------------------- credentials, endpoints
def test_missing_credentials_are_named(s3_bucket, tmp_path, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    with pytest.raises(WorkspaceStorageError, match=rf"PROMPTLAB_WORKSPACE=s3://{s3_bucket}/ws: reaching "
                                                    r"s3://.* failed: NoCredentialsError.*AWS_ACCESS_KEY_ID"):
        machine(s3_bucket, tmp_path, "a").pull([Unit("curation/Shapes")])


def test_an_unreachable_endpoint_fails_in_seconds_naming_the_url(s3_bucket, tmp_path, monkeypatch):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nothing listens there
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    started = time.perf_counter()
    with pytest.raises(WorkspaceStorageError, match=rf"s3://{s3_bucket}/ws: reaching .* EndpointConnectionError"):
        machine(s3_bucket, tmp_path, "a").push([Unit("curation/Shapes")])
    assert time.perf_counter() - started < 30


def test_a_missing_bucket_is_named(s3_bucket, tmp_path):
    with pytest.raises(WorkspaceStorageError, match="the bucket 'no-such-bucket' does not exist"):
        WorkingCopy(open_store("s3://no-such-bucket/ws"), tmp_path).pull([Unit("curation/Shapes")])


# ------------------------------------------------------------------------------------------------- mirrored units
def test_a_folder_is_published_whole_and_read_back_on_another_machine(s3_bucket, tmp_path):
    one, two = machine(s3_bucket, tmp_path, "one"), machine(s3_bucket, tmp_path, "two")
    unit = Unit("datasets/Shapes")
    write(one.root, "datasets/Shapes/images/a.png", "a")
    write(one.root, "datasets/Shapes/split.json", "{}")
    write(one.root, "datasets/Shapes.fingerprint", "f1")  # its sibling fingerprint travels with it
    write(one.root, "datasets/Shapes/.partial-x/tmp", "never published")
    assert one.push([unit]).files == 3
    stored = objects(s3_bucket)
    assert set(stored) == {"datasets/Shapes/images/a.png", "datasets/Shapes/split.json", "datasets/Shapes.fingerprint",
                           f"datasets/Shapes/{MANIFEST_NAME}"}
    manifest = json.loads(stored[f"datasets/Shapes/{MANIFEST_NAME}"])
    assert manifest["state"] == "complete" and set(manifest["files"]) == set(stored) - {f"datasets/Shapes/{MANIFEST_NAME}"}

    assert two.pull([unit]).files == 3
    assert (two.root / "datasets/Shapes/images/a.png").read_text() == "a"
    assert (two.root / "datasets/Shapes.fingerprint").read_text() == "f1"
    assert two.pull([unit]).files == 0  # in step: nothing moves

    write(one.root, "datasets/Shapes/images/a.png", "a2")
    (one.root / "datasets/Shapes/split.json").unlink()
    assert one.push([unit]).files == 1  # only what changed is uploaded; the removed file goes from the store
    assert "datasets/Shapes/split.json" not in objects(s3_bucket)
    write(two.root, "datasets/Shapes/local-only.txt", "stale")
    assert two.pull([unit]).files == 1
    assert (two.root / "datasets/Shapes/images/a.png").read_text() == "a2"
    assert not (two.root / "datasets/Shapes/split.json").exists()
    assert not (two.root / "datasets/Shapes/local-only.txt").exists()  # the copy is the published version


def test_work_not_pushed_yet_survives_a_pull_of_the_same_version(s3_bucket, tmp_path):
    one = machine(s3_bucket, tmp_path, "one")
    unit = Unit("curation/Shapes")
    write(one.root, "curation/Shapes/index.staged.parquet", "staged")
    one.push([unit])
    (one.root / "curation/Shapes/index.staged.parquet").rename(one.root / "curation/Shapes/index.parquet")
    assert one.pull([unit]).files == 0  # the store still holds what this copy pushed: the promotion is kept
    assert (one.root / "curation/Shapes/index.parquet").exists()
    one.push([unit])
    assert set(objects(s3_bucket)) == {"curation/Shapes/index.parquet", f"curation/Shapes/{MANIFEST_NAME}"}


def test_an_interrupted_push_leaves_nothing_a_reader_takes_as_complete(s3_bucket, tmp_path, monkeypatch):
    one = machine(s3_bucket, tmp_path, "one")
    unit, fresh = Unit("experiments/Shapes/coop"), Unit("experiments/Shapes/new")
    for name in ("config.json", "weights.bin"):
        write(one.root, f"experiments/Shapes/coop/{name}", f"v1 {name}")
        write(one.root, f"experiments/Shapes/new/{name}", f"v1 {name}")
    one.push([unit])
    write(one.root, "experiments/Shapes/coop/config.json", "v2 config.json")
    write(one.root, "experiments/Shapes/coop/weights.bin", "v2 weights.bin")

    real_put = one.store.put_files

    def failing_put(pairs):
        real_put(pairs[:1])  # the first file reaches the store, then the connection drops
        raise ConnectionError("network gone")

    monkeypatch.setattr(one.store, "put_files", failing_put)
    with pytest.raises(ConnectionError):
        one.push([unit])  # v2's first file is in the store, its second is not
    with pytest.raises(ConnectionError):
        one.push([fresh])  # a unit never published: its first file is in the store, no manifest
    assert "experiments/Shapes/new/config.json" in objects(s3_bucket)

    reader = machine(s3_bucket, tmp_path, "reader", wait_seconds=0.5)
    with pytest.raises(WorkspaceStorageError, match=r"experiments/Shapes/coop is being written .* push is under way "
                                                    r"or was interrupted"):
        reader.pull([unit])
    assert not (reader.root / "experiments/Shapes/coop").exists()
    assert reader.pull([fresh]).files == 0 and not (reader.root / "experiments/Shapes/new").exists()
    assert not reader.unit_exists(fresh) and not reader.unit_exists(unit)

    monkeypatch.setattr(one.store, "put_files", real_put)
    one.push([unit, fresh])  # the next push repairs both
    reader.pull([unit, fresh])
    assert (reader.root / "experiments/Shapes/coop/config.json").read_text() == "v2 config.json"
    assert (reader.root / "experiments/Shapes/coop/weights.bin").read_text() == "v2 weights.bin"
    assert (reader.root / "experiments/Shapes/new/weights.bin").read_text() == "v1 weights.bin"


def test_an_object_that_does_not_match_its_manifest_is_refused(s3_bucket, tmp_path):
    one, two = machine(s3_bucket, tmp_path, "one"), machine(s3_bucket, tmp_path, "two", wait_seconds=0.3)
    write(one.root, "reports/report.html", "<html>")
    one.push([Unit("reports")])
    fsspec.filesystem("s3", skip_instance_cache=True).pipe_file(f"{s3_bucket}/ws/reports/report.html", b"tampered")
    with pytest.raises(WorkspaceStorageError, match="reports is inconsistent"):
        two.pull([Unit("reports")])
    assert not (two.root / "reports/report.html").exists()


# ------------------------------------------------------------------------------------------------- additive units
def test_caches_are_merged_file_by_file_and_a_compacted_shard_is_not_fetched_again(s3_bucket, tmp_path):
    one, two = machine(s3_bucket, tmp_path, "one"), machine(s3_bucket, tmp_path, "two")
    cache = Unit("cache/features", additive=True)
    write(one.root, "cache/features/ns/shard-1.safetensors", "1")
    write(one.root, "cache/features/ns/.tmp-9", "half")
    write(two.root, "cache/features/ns/shard-2.safetensors", "2")
    write(two.root, "cache/features/ns/shard-3.safetensors.corrupt", "bad")
    assert one.push([cache]).files == 1 and two.push([cache]).files == 1
    assert set(objects(s3_bucket)) == {"cache/features/ns/shard-1.safetensors", "cache/features/ns/shard-2.safetensors"}
    assert one.pull([cache]).files == 1 and (one.root / "cache/features/ns/shard-2.safetensors").read_text() == "2"
    assert one.push([cache]).files == 0
    (one.root / "cache/features/ns/shard-1.safetensors").unlink()  # merged away by the cache's compaction
    assert one.pull([cache]).files == 0 and not (one.root / "cache/features/ns/shard-1.safetensors").exists()
