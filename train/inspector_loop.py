"""Inspector training loops.

``shared``: the encoder stays frozen; every distinct pair is embedded once, then each criterion's
head is fitted on the cached embeddings (seconds). ``finetuned``: one run per criterion fits a LoRA
adapter on the encoder together with its head (the IBM paper's per-criterion fine-tuned encoder).
"""
from __future__ import annotations

import random
import tempfile
from pathlib import Path

import torch
from torch import nn

from squad.train.batching import length_grouped
from squad.models.quiet import quiet_loading
from squad.train.progress import Bar


def _embedder(encoder):
    return lambda enc: encoder(**enc).last_hidden_state


def _device(spec: dict) -> torch.device:
    """The Ray Train worker's GPU when the job asked for one, else the CPU."""
    if spec["scaling"].get("use_gpu"):
        import ray.train.torch

        return ray.train.torch.get_device()
    return torch.device("cpu")


def embed_pairs(encoder, tok, pairs: list[tuple[str, str]], max_length: int, features: str = "joint",
                board: str | None = None,
                batch_size: int = 64, device: torch.device | str = "cpu") -> torch.Tensor:
    """Head inputs for every pair, computed once (the encoder is frozen)."""
    from squad.inspector.classifier import pair_features

    out = []
    with torch.inference_mode():
        bar = Bar("inspector: embedding pairs", -(-len(pairs) // batch_size), board)
        for i in range(0, len(pairs), batch_size):
            out.append(pair_features(_embedder(encoder), tok, pairs[i:i + batch_size], max_length, features, device))
            bar.update(1)
        bar.close()
    return torch.cat(out) if out else torch.empty(0)


def fit_head(x: torch.Tensor, y: torch.Tensor, hidden: int, epochs: int, lr: float, wd: float, seed: int):
    from squad.inspector.classifier import Head

    torch.manual_seed(seed)
    head = Head(x.shape[1], hidden).to(x.device)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=wd)
    pos = float(y.sum())
    pos_weight = torch.tensor((len(y) - pos) / max(pos, 1.0), device=x.device)
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    head.train()
    y = y.to(x.device)
    loss = torch.tensor(0.0)
    for _ in range(epochs):
        opt.zero_grad()
        loss = loss_fn(head(x), y)
        loss.backward()
        opt.step()
    return head.eval(), float(loss.detach())


def train_shared_inspector(config: dict) -> None:
    import ray.train
    from transformers import AutoModel

    from squad.inspector.classifier import save_heads
    from squad.models.registry import load_tokenizer
    from squad.tracking import init_run
    from squad.train.checkpointing import write_state

    spec = config["spec"]
    torch.set_num_threads(spec["scaling"]["torch_threads"])
    tok = load_tokenizer(Path(config["base_dir"]))
    device = _device(spec)
    with quiet_loading():
        encoder = AutoModel.from_pretrained(config["base_dir"], trust_remote_code=False).to(device).eval()
    rows: dict[str, list[dict]] = config["rows"]
    pairs = sorted({(r["question"], r["answer"]) for rs in rows.values() for r in rs})
    index = {p: i for i, p in enumerate(pairs)}
    emb = embed_pairs(encoder, tok, pairs, spec["max_length"], spec.get("features", "joint"),
                      board=config.get("progress_board"), device=device)
    run = init_run(config["wandb"]["project"], "inspector-shared", config["wandb"]["mode"], spec,
                   directory=config.get("wandb_dir"), group=config["run_name"])
    heads, metrics = {}, {}
    for k, (crit, rs) in enumerate(sorted(rows.items())):
        x = emb[[index[(r["question"], r["answer"])] for r in rs]]
        y = torch.tensor([float(r["label"]) for r in rs])
        heads[crit], metrics[f"{crit}/loss"] = fit_head(x, y, spec["hidden"], spec["epochs"], spec["lr"],
                                                        spec["weight_decay"], config["seed"] + k)
    if run:
        run.log(metrics)
        run.finish()
    with tempfile.TemporaryDirectory() as tmp:
        save_heads(heads, Path(tmp) / "heads.safetensors")
        write_state(Path(tmp), epoch=1)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def finetuned_encoder(base_dir: str):
    """The encoder with a LoRA adapter on every attention and feed-forward projection."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel

    with quiet_loading():
        encoder = AutoModel.from_pretrained(base_dir, trust_remote_code=False)
        return get_peft_model(encoder, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.1,
                                                  target_modules=["query", "key", "value", "dense"]))


def fit_finetuned(encoder, head, tok, rows: list[dict], spec: dict, seed: int, start: int = 0,
                  on_epoch=None, desc: str = "inspector", board: str | None = None) -> None:
    """Train encoder adapter and head together, calling ``on_epoch(epoch, metrics)`` after each epoch."""
    from squad.inspector.classifier import pair_features

    device = next(encoder.parameters()).device
    head.to(device)
    params = [p for p in encoder.parameters() if p.requires_grad] + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=spec["finetune_lr"], weight_decay=spec["weight_decay"])
    pos = sum(r["label"] for r in rows)
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=torch.tensor((len(rows) - pos) / max(pos, 1), device=device))
    if spec.get("gradient_checkpointing"):
        encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    bs = spec["batch_size"]
    lengths = None
    if spec.get("group_by_length"):
        from squad.inspector.classifier import encode_batch

        lengths = [len(ids) for ids in encode_batch(tok, [(r["question"], r["answer"]) for r in rows],
                                                    spec["max_length"], tensors=False)["input_ids"]]
    for epoch in range(start, spec["finetune_epochs"]):
        if lengths is not None:
            groups = length_grouped(lengths, bs, seed + epoch)
        else:
            order = list(range(len(rows)))
            random.Random(seed + epoch).shuffle(order)
            groups = [order[i:i + bs] for i in range(0, len(order), bs)]
        encoder.train(), head.train()
        total = 0.0
        bar = Bar(f"{desc} epoch {epoch + 1}", len(groups), board)
        for group in groups:
            chunk = [rows[j] for j in group]
            x = pair_features(_embedder(encoder), tok, [(r["question"], r["answer"]) for r in chunk],
                              spec["max_length"], spec.get("features", "joint"), device)
            logits = head(x)
            loss = loss_fn(logits, torch.tensor([float(r["label"]) for r in chunk], device=device))
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(chunk)
            bar.update(1)
        bar.close()
        if on_epoch:
            on_epoch(epoch + 1, {"epoch": epoch + 1, "loss": total / len(rows)})
    encoder.eval(), head.eval()


def train_finetuned_inspector(config: dict) -> None:
    """One criterion: LoRA on the encoder plus its head, trained end to end (a Ray Train worker)."""
    import ray.train
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    from squad.inspector.classifier import Head, feature_dim, save_heads
    from squad.models.registry import load_tokenizer
    from squad.tracking import init_run
    from squad.train.checkpointing import read_state, starting_checkpoint, write_state

    spec, crit = config["spec"], config["criterion"]
    torch.manual_seed(config["seed"])
    torch.set_num_threads(spec["scaling"]["torch_threads"])
    tok = load_tokenizer(Path(config["base_dir"]))
    encoder = finetuned_encoder(config["base_dir"])
    head = Head(feature_dim(encoder.config.hidden_size, spec.get("features", "joint")), spec["hidden"])
    start = 0
    ckpt = starting_checkpoint(config)
    if ckpt:
        with ckpt.as_directory() as d:
            set_peft_model_state_dict(encoder, load_file(str(Path(d) / "adapter" / "adapter_model.safetensors")))
            head.load_state_dict({k.split(".", 1)[1]: v for k, v in load_file(str(Path(d) / "heads.safetensors")).items()})
            start = read_state(Path(d)).get("epoch", 0)
    encoder.to(_device(spec))
    run = init_run(config["wandb"]["project"], f"inspector-{crit}", config["wandb"]["mode"], spec,
                   directory=config.get("wandb_dir"), group=config["run_name"])

    def report(epoch: int, metrics: dict) -> None:
        if run:
            run.log(metrics)
        with tempfile.TemporaryDirectory() as tmp:
            encoder.save_pretrained(Path(tmp) / "adapter", safe_serialization=True)
            save_heads({crit: head}, Path(tmp) / "heads.safetensors")
            write_state(Path(tmp), epoch=epoch)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))

    fit_finetuned(encoder, head, tok, config["rows"][crit], spec, config["seed"], start, report, f"inspector/{crit}",
                  config.get("progress_board"))
    if run:
        run.finish()
