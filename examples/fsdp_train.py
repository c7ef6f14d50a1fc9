"""Fine-tune STORM sharded with FSDP2 (torch's `fully_shard`), the temporal encoder's A_log and D kept fp32 under
bf16 mixed precision (`storm_hf.training.fsdp.shard_model`), and save a checkpoint `from_pretrained` loads.

    python -m torch.distributed.run --standalone --nproc_per_node 2 examples/fsdp_train.py --output-dir outputs/fsdp

The script's path is from the repository root. On a CPU it runs over gloo, on GPUs over NCCL (one process per GPU:
--nproc_per_node 8). Without --model and --data it trains the bundled model on a few generated clips (offline).
Every process takes its share of each global batch (--batch-size, divided by the number of processes).
"""

import argparse
import json
import os

import torch
import torch.distributed as dist
from torch.distributed.fsdp import MixedPrecisionPolicy

from storm_hf import StormForConditionalGeneration, StormProcessor
from storm_hf.miniature import BUNDLED_MODEL
from storm_hf.miniature.tiny import write_clip
from storm_hf.training.data import StormDataCollator, load_video_dataset
from storm_hf.training.fsdp import full_state_dict, shard_model

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--model", default=BUNDLED_MODEL, help="a STORM checkpoint (default: the bundled model)")
parser.add_argument("--data", help="a JSONL file of video QA records (default: generated clips)")
parser.add_argument("--video-root", help="folder of the records' videos (default: the data file's folder)")
parser.add_argument("--output-dir", default="outputs/fsdp")
parser.add_argument("--steps", type=int, default=2)
parser.add_argument("--batch-size", type=int, default=2, help="global batch, split over the processes")
parser.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
args = parser.parse_args()

dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
rank, world = dist.get_rank(), dist.get_world_size()
if args.batch_size % world:
    raise SystemExit(f"--batch-size {args.batch_size} does not split over {world} processes")
device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if torch.cuda.is_available() else None
if device is not None:
    torch.cuda.set_device(device)

data = args.data
if data is None:  # a few generated clips of a square moving left or right, in the documented record format
    data = os.path.join(args.output_dir, "example-data", "train.jsonl")
    if rank == 0:
        os.makedirs(os.path.join(os.path.dirname(data), "clips"), exist_ok=True)
        with open(data, "w") as f:
            for i in range(8):
                direction = "right" if i % 2 == 0 else "left"
                path = os.path.join("clips", f"{i}.mp4")
                write_clip(os.path.join(os.path.dirname(data), path), num_frames=16, size=48, fps=8,
                           direction=direction)
                question = [{"type": "video"}, {"type": "text", "text": "Which way does the square move?"}]
                f.write(json.dumps({"video": path, "messages": [{"role": "user", "content": question},
                                                                {"role": "assistant", "content": direction}]}) + "\n")
    dist.barrier()

processor = StormProcessor.from_pretrained(args.model)
model = StormForConditionalGeneration.from_pretrained(args.model, device_map=device).train()
policy = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if args.precision == "bf16"
          else MixedPrecisionPolicy())
shard_model(model, policy)
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
records = load_video_dataset(data)
collate = StormDataCollator(processor, video_root=args.video_root or os.path.dirname(data))
share = args.batch_size // world
for step in range(args.steps):
    first = (step * args.batch_size + rank * share) % len(records)
    batch = collate([records[(first + i) % len(records)] for i in range(share)])
    batch = {k: v.to(device) if device is not None and torch.is_tensor(v) else v for k, v in batch.items()}
    loss = model(**batch).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    mean = loss.detach().clone()
    dist.all_reduce(mean)
    if rank == 0:
        print(f"step {step + 1}: loss {mean.item() / world:.4f}")

state = full_state_dict(model)  # every process gathers; rank 0 gets the tensors
if rank == 0:
    model.save_pretrained(args.output_dir, state_dict=state)
    processor.save_pretrained(args.output_dir)
    print(f"saved {args.output_dir}")
dist.barrier()  # every process leaves together
dist.destroy_process_group()
