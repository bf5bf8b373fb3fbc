"""Aligner training loop (one Ray Train worker group per criterion).

Phase 1, identity warm-up: good pairs map to themselves (the Aligner paper's warm-up).
Phase 2, corrections: (question, answer) -> correction, shuffled with the policy's pairs to keep
(answer -> itself: fine on this criterion). Loss is on the completion tokens only.
Each epoch reports a checkpoint; a restarted run resumes from the latest one.
"""
from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path

import torch

IGNORE = -100


def build_examples(tok, instruction: str, rows: list[dict], target_key: str, max_length: int) -> list[tuple[list[int], list[int]]]:
    """Token ids and labels with the prompt masked out: completion-only loss."""
    from squad.core.prompt import build_prompt

    end = "<|im_end|>" if "<|im_end|>" in tok.get_vocab() else (tok.eos_token or "")
    out = []
    for r in rows:
        prompt = tok(build_prompt(tok, instruction, r["question"], r["answer"]), add_special_tokens=False)["input_ids"]
        target = tok(r[target_key] + end, add_special_tokens=False)["input_ids"][: max_length // 2]
        prompt = prompt[-(max_length - len(target)):]
        out.append((prompt + target, [IGNORE] * len(prompt) + target))
    return out


def batches(examples, batch_size: int, pad_id: int, seed: int, rank: int, world: int):
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    order = order[rank::world]
    for i in range(0, len(order), batch_size):
        chunk = [examples[j] for j in order[i:i + batch_size]]
        width = max(len(ids) for ids, _ in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        labels = torch.full((len(chunk), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for k, (x, y) in enumerate(chunk):
            ids[k, :len(x)], labels[k, :len(y)], mask[k, :len(x)] = torch.tensor(x), torch.tensor(y), 1
        yield ids, mask, labels


def build_model(base_dir: str, spec: dict):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32, trust_remote_code=False)
    if spec["mode"] == "lora":
        from peft import LoraConfig, get_peft_model

        present = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
        targets = [t for t in spec["lora_targets"] if t in present]
        if not targets:
            raise ValueError(f"none of aligner.lora_targets {spec['lora_targets']} exist in {base_dir}")
        n_layers = getattr(model.config, "num_hidden_layers", None)
        top = spec.get("lora_top_layers")
        layers = list(range(n_layers - top, n_layers)) if top and n_layers and top < n_layers else None
        model = get_peft_model(model, LoraConfig(r=spec["lora_r"], lora_alpha=spec["lora_alpha"],
                                                 lora_dropout=spec["lora_dropout"], target_modules=targets,
                                                 layers_to_transform=layers, task_type="CAUSAL_LM"))
    if spec.get("gradient_checkpointing"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def completion_loss(model, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token loss on the completion only, computing LM-head logits only where they are needed."""
    width = ids.shape[1]
    first = int((labels != IGNORE).float().argmax(dim=1).min())  # earliest completion token in the batch
    keep = width - max(first - 1, 0)
    logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=keep).logits  # positions width-keep..
    target = labels[:, width - keep + 1:]
    logits = logits[:, : target.shape[1]]
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), target.reshape(-1),
                                             ignore_index=IGNORE)


def _unwrap(model):
    return getattr(model, "module", model)


def train_aligner(config: dict) -> None:
    import ray.train
    import ray.train.torch

    from squad.models.quiet import quiet_loading
    from squad.models.registry import load_tokenizer
    from squad.tracking import init_run
    from squad.train.progress import Bar
    from squad.train.checkpointing import load_optimizer, read_state, save_optimizer, starting_checkpoint, write_state

    spec, crit = config["spec"], config["criterion"]
    torch.manual_seed(config["seed"])
    torch.set_num_threads(spec["scaling"]["torch_threads"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()

    tok = load_tokenizer(Path(config["base_dir"]), padding_side="right")
    good = config["good"][: spec["warmup_limit"]] if spec.get("warmup_limit") else config["good"]
    warm = build_examples(tok, config["instruction"], good, "answer", spec["max_length"])
    # Corrections, and the pairs to keep (fine on this criterion): answer -> itself, mixed in.
    main = (build_examples(tok, config["instruction"], config["corrections"], "correction", spec["max_length"])
            + build_examples(tok, config["instruction"], config.get("keep", []), "answer", spec["max_length"]))
    phases = [("warmup", warm)] * spec["warmup_epochs"] + [("correct", main)] * spec["epochs"]

    with quiet_loading():
        model = build_model(config["base_dir"], spec)
    params = [p for p in model.parameters() if p.requires_grad]
    start_epoch, step = 0, 0
    ckpt = starting_checkpoint(config)
    if ckpt:
        with ckpt.as_directory() as d:
            state = read_state(Path(d))
            _load_weights(model, Path(d), spec)
            start_epoch, step = state.get("epoch", 0), state.get("step", 0)

    engine = None
    if spec.get("deepspeed"):
        engine, opt = deepspeed_engine(model, params, spec)
        model = engine
    else:
        opt = torch.optim.AdamW(params, lr=spec["lr"], weight_decay=0.0)
        if ckpt:
            with ckpt.as_directory() as d:
                load_optimizer(opt, Path(d) / "optimizer.safetensors")
        if world > 1:
            model = ray.train.torch.prepare_model(model)  # DDP across workers
    device = ray.train.torch.get_device() if spec["scaling"]["use_gpu"] else torch.device("cpu")
    if engine is None:
        model.to(device)

    run = init_run(config["wandb"]["project"], f"aligner-{crit}", config["wandb"]["mode"],
                   {"criterion": crit, **spec}, directory=config.get("wandb_dir"), group=config["run_name"]) if rank == 0 else None
    model.train()
    for epoch in range(start_epoch, len(phases)):
        phase, examples = phases[epoch]
        n_batches = -(-len(examples[rank::world]) // spec["batch_size"])
        desc = f"aligner/{crit} epoch {epoch + 1}/{len(phases)} ({phase})"
        bar = Bar(desc, n_batches, config.get("progress_board")) if rank == 0 else None
        total, count = 0.0, 0
        for ids, mask, labels in batches(examples, spec["batch_size"], tok.pad_token_id, config["seed"] + epoch, rank, world):
            ids, mask, labels = ids.to(device), mask.to(device), labels.to(device)
            loss = completion_loss(model, ids, mask, labels)
            if engine is not None:
                engine.backward(loss)
                engine.step()
            else:
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
            step += 1
            total, count = total + float(loss.detach()), count + 1
            if bar:
                bar.update(1)
                bar.set_description(f"{desc} loss {total / count:.3f}")
            if run:
                run.log({"train/loss": float(loss.detach()), "train/epoch": epoch, "phase": phase}, step=step)
        if bar:
            bar.close()
        metrics = {"epoch": epoch + 1, "phase": phase, "loss": total / max(count, 1), "criterion": crit}
        with tempfile.TemporaryDirectory() as tmp:
            state = gathered_state(engine, spec)  # collective under ZeRO-3: every rank takes part
            if rank == 0:
                _unwrap(model).save_pretrained(tmp, safe_serialization=True, state_dict=state)
                if engine is None:
                    save_optimizer(opt, Path(tmp) / "optimizer.safetensors")
                write_state(Path(tmp), epoch=epoch + 1, step=step, phase=phase)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp) if rank == 0 else None)
    if run:
        run.finish()


def _load_weights(model, folder: Path, spec: dict) -> None:
    from safetensors.torch import load_file

    if spec["mode"] == "lora":
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, load_file(str(folder / "adapter_model.safetensors")))
    else:
        files = sorted(folder.glob("model*.safetensors"))
        state = {}
        for f in files:
            state.update(load_file(str(f)))
        model.load_state_dict(state, strict=False)


def deepspeed_engine(model, params, spec):
    """DeepSpeed ZeRO for large aligners; CUDA only. The optimizer is the plain path's AdamW unless the
    JSON config names its own (DeepSpeed's fused ones compile CUDA kernels on first use)."""
    if not torch.cuda.is_available():
        raise RuntimeError(
            "aligner.deepspeed is set but this worker has no CUDA GPU: DeepSpeed ZeRO shards optimizer "
            "state across GPUs and has no CPU training path here. Drop aligner.deepspeed (plain DDP "
            "runs on CPU) or run on a GPU cluster with aligner.scaling.use_gpu=true.")
    import json

    import deepspeed

    ds_config = json.loads(Path(spec["deepspeed"]).read_text())
    ds_config.setdefault("train_micro_batch_size_per_gpu", spec["batch_size"])
    ds_config.setdefault("gradient_clipping", 1.0)
    opt = None if "optimizer" in ds_config else torch.optim.AdamW(params, lr=spec["lr"], weight_decay=0.0)
    os.environ.setdefault("LOCAL_RANK", "0")
    engine, opt, _, _ = deepspeed.initialize(model=model, model_parameters=params, optimizer=opt, config=ds_config)
    return engine, opt


def gathered_state(engine, spec: dict):
    """Under ZeRO-3 each rank holds a shard: gather full 16-bit weights (trainable ones only for LoRA)."""
    if engine is None or engine.zero_optimization_stage() != 3:
        return None
    return engine._zero3_consolidated_16bit_state_dict(exclude_frozen_parameters=spec["mode"] == "lora")
