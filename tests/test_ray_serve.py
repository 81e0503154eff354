"""The serve app as a Ray Serve deployment: 2 replicas on a local Ray instance (loopback only), both answering /predict."""

from __future__ import annotations

import time

import pytest

from hfcompress.errors import ConfigError
from hfcompress.serving.ray_serve import REPLICA_HEADER, build_deployment, ray_missing
from hfcompress.utils.net import free_port


def test_bad_replica_counts_are_config_errors():
    with pytest.raises(ConfigError, match="at least 1 replica"):
        build_deployment("unused", None, replicas=0)


def test_without_ray_the_error_names_the_extra(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "ray.serve", None)  # what an environment without the extra gives: ImportError
    assert 'pip install "hfcompress[ray]"' in ray_missing()
    with pytest.raises(ConfigError, match=r"hfcompress\[ray\]"):
        build_deployment("unused", None, replicas=2)


@pytest.fixture
def local_ray():
    if reason := ray_missing():
        pytest.skip(reason)
    import ray
    from ray import serve

    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", configure_logging=False, log_to_driver=False)
    try:
        yield
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.mark.slow
def test_two_replicas_both_answer_predict(local_ray, tiny_teacher_dir, tmp_path):
    import httpx
    from ray import serve

    from hfcompress.export import export_onnx
    from hfcompress.serving.config import ServeConfig
    from hfcompress.serving.ray_serve import APP_NAME, start_ray_serve

    onnx_dir = export_onnx(tiny_teacher_dir, tmp_path / "onnx", sequence_lengths=[8]).parent
    port = free_port()
    start_ray_serve(onnx_dir, ServeConfig(threads=1, max_wait_ms=0), replicas=2, host="127.0.0.1", port=port, replica_cpus=1)

    deployment = serve.status().applications[APP_NAME].deployments["HFCompressServer"]
    assert deployment.replica_states == {"RUNNING": 2}
    replicas, answers = set(), []
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        deadline = time.monotonic() + 60
        while len(replicas) < 2 and time.monotonic() < deadline:  # Ray's router picks between replicas at random: both show within a few requests
            response = client.post("/predict", json={"inputs": ["a fine film", "the worst of the year"]})
            assert response.status_code == 200, response.text
            answers.append(response.json())
            replicas.add(response.headers[REPLICA_HEADER])
        assert len(replicas) == 2, f"only replica {replicas} answered {len(answers)} requests"
        assert all(len(a) == 2 and {r["label"] for r in a[0]} == {"LABEL_0", "LABEL_1"} for a in answers)
        assert answers[0] == answers[-1]  # the replicas serve the same model
        bad = client.post("/predict", json={"inputs": 42})
        assert bad.status_code == 422 and "error" in bad.json()  # the app's own validation, through Ray's proxy
        assert client.get("/ready").status_code == 200 and "hfcompress_batch_size" in client.get("/metrics").text


def test_cli_ray_replicas_goes_to_ray_serve_and_rejects_a_bad_count(tiny_teacher_dir, capsys):
    from hfcompress.cli import main

    assert main(["serve", str(tiny_teacher_dir), "--ray-replicas", "0"]) == 2
    assert "at least 1 replica" in capsys.readouterr().err
