"""Training configuration (``configs/train.yaml``), one class per concern."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, model_validator


class _Strict(BaseModel):
    model_config = {"extra": "forbid"}


class ScalingSpec(_Strict):
    num_workers: int = Field(1, ge=1, description="Ray Train workers for this model (data parallel).")
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs reserved per worker.")
    use_gpu: bool = Field(False, description="Train on GPUs: each worker gets gpus_per_worker of one.")
    gpus_per_worker: float = Field(1.0, gt=0, description="GPUs per worker with use_gpu; a fraction lets several models share one GPU.")
    torch_threads: int = Field(1, ge=1, description="torch intra-op threads per worker.")


class AlignerTrain(_Strict):
    base: str = Field("smollm2-135m-instruct", description="Registry name or HF model directory.")
    mode: Literal["lora", "full"] = Field("lora", description="One LoRA adapter per criterion, or full fine-tuning.")
    lora_r: int = Field(16, ge=1)
    lora_alpha: int = Field(32, ge=1)
    lora_dropout: float = Field(0.05, ge=0, lt=1)
    lora_targets: list[str] = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj",
                                                             "gate_proj", "up_proj", "down_proj"])
    lora_top_layers: int | None = Field(None, ge=1, description="Adapt only the top N layers: backward stops there, so training is much cheaper on CPU.")
    lr: float = Field(3e-4, gt=0)
    warmup_limit: int | None = Field(None, ge=1, description="Use at most this many good pairs for the identity warm-up.")
    warmup_epochs: int = Field(1, ge=0, description="Identity warm-up epochs on good pairs (answer -> itself).")
    epochs: int = Field(2, ge=1, description="Correction epochs on the triples.")
    batch_size: int = Field(8, ge=1)
    max_length: int = Field(384, ge=32, description="Prompt plus correction tokens; longer rows are truncated from the prompt side.")
    max_new_tokens: int = Field(160, ge=1, description="Generation budget stored in the bundle.")
    gradient_checkpointing: bool = Field(
        False, description="Recompute each layer's activations in the backward pass instead of keeping them: one "
                           "more forward pass per step, a fraction of the memory, the same gradients.")
    save_dtype: Literal["float32", "float16", "bfloat16"] = Field(
        "float32", description="dtype of the adapter weights written to the bundle (training and checkpoints stay float32); "
                               "float16 halves the size (identical greedy outputs on the 31 held-out honesty items compared).")
    deepspeed: str | None = Field(None, description="DeepSpeed ZeRO JSON config (GPU only), e.g. configs/deepspeed_zero2.json.")
    scaling: ScalingSpec = Field(default_factory=ScalingSpec)


class InspectorTrain(_Strict):
    base: str = Field("all-minilm-l6-v2", description="Registry name or HF encoder directory.")
    kind: Literal["shared", "finetuned"] = Field("shared", description="Frozen shared encoder + heads, or a LoRA-fine-tuned encoder per criterion.")
    hidden: int = Field(256, ge=8, description="Head hidden width.")
    features: Literal["joint", "pair", "span"] = Field("pair", description="Head input: joint pair embedding, or joint + question + answer + their product.")
    max_length: int = Field(256, ge=16)
    quantize: Literal["none", "int8"] = Field(
        "none", description="Serve the trained encoders as int8 copies on ONNX Runtime (recorded in the manifest; "
                            "the bundle's evaluation runs with it).")
    epochs: int = Field(300, ge=1, description="Head epochs (shared: full batch over cached embeddings); finetuned: passes over the data.")
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(1e-2, ge=0)
    finetune_epochs: int = Field(4, ge=1, description="Encoder fine-tuning epochs (finetuned kind).")
    finetune_lr: float = Field(5e-4, gt=0)
    batch_size: int = Field(32, ge=1)
    group_by_length: bool = Field(
        False, description="Finetuned kind: batches of similar-length pairs (shuffled), so less compute goes to padding.")
    gradient_checkpointing: bool = Field(
        False, description="Finetuned kind: recompute the encoder's activations in the backward pass: about half "
                           "the memory for more compute, the same gradients.")
    scaling: ScalingSpec = Field(default_factory=ScalingSpec)


class ProbeTrain(_Strict):
    """The hidden-state judge (squad.inspector.probe): a logistic head per criterion on the aligner
    base's hidden states, fitted on the inspectors' training rows and blended into their scores."""
    layer: int = Field(ge=1, description="Read the hidden states after this many of the aligner base's layers.")
    l2: float = Field(1e-2, ge=0, description="L2 penalty of each head (on standardised features).")
    weight: float = Field(0.5, ge=0, le=1, description="The judge's share of the blended logit.")
    inspector_cap: float | None = Field(None, gt=0, description="Clip the inspector's logit to +-this before blending (none: no clip).")
    max_question_tokens: int = Field(64, ge=1, description="The question is cut to this many tokens.")
    max_answer_tokens: int = Field(128, ge=1, description="The answer is cut to this many tokens.")
    batch_size: int = Field(8, ge=1, description="Pairs per forward pass while computing features.")


class WandbSpec(_Strict):
    project: str = "aligner-squad"
    mode: Literal["auto", "offline", "online", "disabled"] = Field(
        "auto", description="auto: online when logged in (WANDB_API_KEY or netrc), otherwise offline.")


class TrainConfig(_Strict):
    policies: str = Field("policies", description="Folder holding one sub-folder per criterion.")
    criteria: list[str] | None = Field(None, description="Subset of criteria; default all found.")
    output: str = Field("out/bundle", description="Where the squad bundle is written.")
    storage: str = Field("out/ray_runs", description="Ray Train storage path (checkpoints, for resume).")
    run_name: str = Field("squad", description="Run name; rerunning with the same name resumes from checkpoints.")
    max_steps: int = Field(3, ge=1, description="Squad max_steps stored in the bundle.")
    seed: int = 0
    limit: int | None = Field(None, ge=1, description="Use at most this many rows per file (quick runs, tests).")
    evaluate: bool = Field(True, description="Evaluate the bundle on the held-out split and store the metrics.")
    local_mode: bool = Field(False, description="Start a throwaway local Ray even if RAY_ADDRESS is set.")
    aligner: AlignerTrain = Field(default_factory=AlignerTrain)
    inspector: InspectorTrain = Field(default_factory=InspectorTrain)
    probe: ProbeTrain | None = Field(None, description="Fit the hidden-state judge into the bundle (none: inspectors alone).")
    only: Literal["probe", "aligners"] | None = Field(
        None, description="Refit one part of the existing bundle at `output` on the policies' current data, keeping "
                          "the rest: probe, the hidden-state judge; aligners, the aligners of `criteria` (default all).")
    wandb: WandbSpec = Field(default_factory=WandbSpec)

    @model_validator(mode="after")
    def _check(self):
        if self.aligner.deepspeed and not Path(self.aligner.deepspeed).is_file():
            raise ValueError(f"aligner.deepspeed: {self.aligner.deepspeed} does not exist")
        if self.only == "probe" and self.probe is None:
            raise ValueError("only=probe needs a probe section (probe.layer=16, say)")
        return self
