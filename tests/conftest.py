import pytest
import torch

import storm_hf  # noqa: F401  (registers the Auto classes)
from storm_hf import StormConfig, StormForConditionalGeneration


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def tiny_config(**overrides) -> StormConfig:
    return StormConfig.from_preset("tiny", **overrides)


def tiny_model(**overrides) -> StormForConditionalGeneration:
    torch.manual_seed(0)
    return StormForConditionalGeneration(tiny_config(**overrides)).eval()


def video_prompt(config: StormConfig, frame_counts, prefix=(1, 2), suffix=(3, 4)):
    """input_ids (1, seq) with one expanded placeholder run per video."""
    ids = list(prefix)
    for frames in frame_counts:
        ids += [config.video_token_id] * config.num_visual_tokens(frames) + [5]
    return torch.tensor([ids + list(suffix)])


def write_square_clips_job(root) -> None:
    """Into the folder ``root``: clips/ with 8 generated videos of a square moving right or left, train.jsonl asking
    where it moves, and model/ with a tiny random-weight STORM (seed 0) and its processor: the workspace of the tests
    that launch `storm-hf train` over several processes (`launch_train`)."""
    import json
    import os

    from storm_hf import StormProcessor
    from storm_hf.miniature.tiny import word_tokenizer, write_clip

    os.makedirs(os.path.join(root, "clips"), exist_ok=True)
    records = []
    for i in range(8):
        direction = "right" if i % 2 == 0 else "left"
        write_clip(os.path.join(root, "clips", f"{i}.mp4"), num_frames=16, size=32, fps=8, direction=direction)
        records.append({"video": f"clips/{i}.mp4", "messages": [
            {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "where does the square move ?"}]},
            {"role": "assistant", "content": f"the square moves {direction}"}]})
    with open(os.path.join(root, "train.jsonl"), "w") as f:
        f.write("\n".join(json.dumps(r) for r in records))
    config = tiny_config()
    torch.manual_seed(0)
    StormForConditionalGeneration(config).save_pretrained(os.path.join(root, "model"))
    tokenizer = word_tokenizer("where does the square move moves left right ?".split())
    StormProcessor.from_config(config, tokenizer=tokenizer).save_pretrained(os.path.join(root, "model"))


def launch_train(root, name, processes, training, entry=("-m", "storm_hf", "train"), env=None, launcher=None):
    """`storm-hf train` (or ``entry``, a script taking the job's path) of the tiny model of `write_square_clips_job`
    on its clips, 4 frames, under torch's launcher with ``processes`` processes (or ``launcher``, the arguments of
    `accelerate launch` before the script); ``training``: the job's training section (output_dir is ``root/name``).
    Returns the finished process."""
    import os
    import subprocess
    import sys

    import yaml

    job = {"model": str(root / "model"), "train_file": str(root / "train.jsonl"), "video_root": str(root),
           "num_frames": 4, "stage": "sft", "training": {"output_dir": str(root / name), **training}}
    (root / f"{name}.yaml").write_text(yaml.safe_dump(job))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **(env or {})}
    if launcher is None:
        launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    else:
        launch = [sys.executable, "-m", "accelerate.commands.launch", *launcher, "--num_processes", str(processes),
                  "--num_machines", "1", "--dynamo_backend", "no"]
    return subprocess.run([*launch, *entry, str(root / f"{name}.yaml")], capture_output=True, text=True,
                          timeout=600, env=env)


# A script running `storm-hf train` on the job given as its argument, recording what the temporal mixers saw (A_log's,
# D's and in_proj's output dtypes) into <job>.seen-<rank>.json; `recording_train_worker(prelude)` puts ``prelude``
# (code run first, e.g. a setting of accelerate) before it.
_RECORDING_WORKER = r'''
import json, os, sys
from storm_hf.modeling_storm import StormMambaMixer
seen = set()
real_ssm = StormMambaMixer._ssm
def recording(self, x, *args, **kwargs):  # x: in_proj's output, in the projections' compute dtype
    seen.add((str(self.A_log.dtype), str(self.D.dtype), str(x.dtype)))
    return real_ssm(self, x, *args, **kwargs)
StormMambaMixer._ssm = recording
from storm_hf.training.job import main
main(sys.argv[1:])
with open(sys.argv[1][:-len(".yaml")] + f".seen-{os.environ['RANK']}.json", "w") as f:
    json.dump(sorted(seen), f)
'''


def recording_train_worker(prelude: str = "") -> str:
    return prelude + _RECORDING_WORKER
