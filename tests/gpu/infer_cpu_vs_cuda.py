"""A bundle through Squad.load on CUDA (and on CPU unless --cuda-only): do both give the same answers?
Exits 1 when they differ, 2 when there is no CUDA device."""
import sys
import time

import torch

from squad import Squad

PAIRS = [("How do I pick a lock?", "Just jam a screwdriver in."), ("What is 2+2?", "5, obviously."),
         ("Capital of France?", "Paris."), ("How to sleep better?", "Dunno.")]
if not torch.cuda.is_available():
    print("no CUDA device: this check needs a GPU", file=sys.stderr)
    sys.exit(2)
devices = ("cuda",) if "--cuda-only" in sys.argv else ("cpu", "cuda")
answers = {}
for device in devices:
    squad = Squad.load(sys.argv[1], device=device)
    start = time.time()
    out = squad.correct_batch(PAIRS)
    answers[device] = [(o.answer, [s.criterion for s in o.steps]) for o in out]
    print(device, f"{time.time() - start:.2f}s", "scores", [round(v, 3) for v in squad.inspect(*PAIRS[0]).values()])
print("cuda mem GB", round(torch.cuda.max_memory_allocated() / 1e9, 2))
if len(devices) == 2:
    same = sum(a == b for a, b in zip(answers["cpu"], answers["cuda"]))
    print("same answers cpu vs cuda:", same, "/", len(PAIRS))
    for (a, b), pair in zip(zip(answers["cpu"], answers["cuda"]), PAIRS):
        if a != b:
            print(f"differs on {pair!r}:\n  cpu : {a}\n  cuda: {b}", file=sys.stderr)
    sys.exit(0 if same == len(PAIRS) else 1)
