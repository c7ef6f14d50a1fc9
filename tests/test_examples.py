"""The examples run offline and print what they promise (the README's main job, `storm-hf demo`, is tested in
tests/test_bundled_model.py)."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OFFLINE = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def run(script, *args, cwd=None):
    result = subprocess.run([sys.executable, str(ROOT / "examples" / script), *args], capture_output=True,
                            text=True, env=OFFLINE, timeout=300, cwd=cwd)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_streaming_example_matches_one_call_and_reports_median_chunk_times():
    out = run("stream_forward_only.py", "--frames", "32", "--repeats", "3")
    difference = float(out.strip().splitlines()[-1].split(":")[-1])
    assert difference < 1e-5
    assert "median of 3 runs after a warm-up" in out and "last quarter of the stream / first quarter" in out


def test_video_question_example():
    out = run("video_question.py")
    assert "16 frames -> 64 visual tokens" in out and "answer (random weights):" in out


def test_finetune_lora_example(tmp_path):
    import re

    import yaml

    out = run("finetune_lora.py", "--max-steps", "4", cwd=tmp_path)  # fewer steps than the usual logging interval
    assert "stage lora:" in out and "merged model in" in out
    assert re.search(r"^loss \d+\.\d+ -> \d+\.\d+ over steps 0-4; adapter in", out, flags=re.M)
    training = yaml.safe_load((tmp_path / "outputs" / "job.yaml").read_text())["training"]
    assert training["logging_steps"] == 4 and training["activation_checkpointing"] is True
    assert "gradient_checkpointing" not in training  # transformers 5's name, not the deprecated one
    assert (tmp_path / "outputs" / "storm-lora" / "adapter_model.safetensors").is_file()
    assert (tmp_path / "outputs" / "storm-lora" / "merged" / "model.safetensors").is_file()
    assert (tmp_path / "outputs" / "example-data" / "train.jsonl").is_file()


def test_token_reduction_benchmark_runs_on_the_models_own_stages():
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "token_reduction.py"), "--frames", "4",
                             "--repeats", "1"], capture_output=True, text=True, env=OFFLINE, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "k=4, s=2" in result.stdout and "speed-up" in result.stdout


def test_latency_benchmark_runs_every_arm_and_writes_json(tmp_path):
    out = tmp_path / "latency.json"
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "latency.py"), "--shapes", "tiny", "--frames", "8",
                             "--repeats", "1", "--warmup", "0", "--new-tokens", "2", "--json", str(out)],
                            capture_output=True, text=True, env=OFFLINE, timeout=300)
    assert result.returncode == 0, result.stderr
    import json

    table = json.loads(out.read_text())["results"][0]
    tokens = {arm: row["visual_tokens"] for arm, row in table["arms"].items()}
    # 8 frames of 64 px / patch 8 -> 8x8 patches -> 4x4 = 16 tokens per frame after the pixel shuffle
    assert tokens == {"storm none": 128, "storm k=4": 32, "storm s=2": 64, "storm k=4 s=2": 16, "storm p=2": 32,
                      "baseline": 128, "llava-onevision": 8 * 16 + 1}  # LLaVA-OV: 2x2 pooling of 8x8, one newline
    assert all(row["ttft"] > 0 and row["decode_per_token"] > 0 for row in table["arms"].values())
    assert "ttft storm none / storm k=4 s=2 (target >= 3)" in table["ratios"]


def test_latency_peak_memory_sees_the_image_encoders_allocations():
    import importlib.util

    import torch

    spec = importlib.util.spec_from_file_location("latency", ROOT / "benchmarks" / "latency.py")
    latency = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(latency)
    with latency.PeakMemory("cpu") as memory:
        block = torch.ones(64, 2**20)  # 256 MB, touched
        del block
    assert memory.peak_mb > 200


def test_compile_benchmark_quick_compiles_and_exports_both_models(tmp_path):
    out = tmp_path / "compile.json"
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "compile.py"), "--quick", "--json", str(out)],
                            capture_output=True, text=True, env=OFFLINE, timeout=300)
    assert result.returncode == 0, result.stderr
    import json

    rows = {(r["label"], r["kind"]): r for r in json.loads(out.read_text())["results"]}
    assert set(rows) == {(m, k) for m in ("storm", "llava-onevision") for k in ("eager", "compile", "export")}
    for (model, kind), row in rows.items():
        assert "error" not in row and "timeout" not in row, (model, kind, row)
        assert row["first"] > 0 and (kind == "export" or row["steady"] > 0)
        if kind != "eager":  # the compiled graph and the exported program give eager's logits
            assert row["max_diff"] < 1e-5, (model, kind, row)
    assert "| storm |" in result.stdout and "compile first forward, storm / llava-onevision" in result.stdout


def test_temporal_diagnostics_and_probe_run():
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "temporal_diagnostics.py"), "--clips", "2",
                             "--max-distance", "2"], capture_output=True, text=True, env=OFFLINE, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "cross-frame reach" in result.stdout and "    0   forward" in result.stdout
    assert all(task in result.stdout for task in ("colour_change", "pair_in_window", "order_in_window"))
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "temporal_probe.py"), "--quick"], env=OFFLINE,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    row = next(line for line in result.stdout.splitlines() if line.startswith("colour_change"))
    assert len([cell for cell in row.split() if cell.startswith("0.") or cell == "1.000"]) == 6  # one per arm


def test_the_probe_reads_a_checkpoints_own_frozen_encoder():
    from storm_hf.miniature import BUNDLED_MODEL

    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "temporal_probe.py"), "--quick", "--frozen-from",
                             BUNDLED_MODEL], env=OFFLINE, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "its encoder" in result.stdout
    row = next(line for line in result.stdout.splitlines() if line.startswith("colour_change"))
    assert all(0 <= float(cell) <= 1 for cell in row.split()[1:])


def test_live_video_example_answers_from_the_cached_stream():
    out = run("live_video.py")
    assert "after 8 frames: which way does the red cross move ? -> down" in out
    assert "after 16 frames: which way does the red cross move ? -> down" in out
    assert "expected: down" in out


def test_long_video_example_encodes_in_chunks_and_answers():
    out = run("long_video.py", "--chunk-frames", "5")
    assert "16 frames -> 64 visual tokens; which way does the square move ? -> right" in out
