"""``squad synth``: synthetic correction triples for one policy from a teacher LLM (squad/data/synth.py).

Wired into the main parser by ``squad.cli.main`` with ``cli_synth.register(sub)``.
"""
from __future__ import annotations

import argparse
import json

_DESCRIPTION = """\
Generate correction triples for one policy with a teacher LLM, the synthetic-data method of the
IBM Aligners paper: the teacher lists topics relevant to the policy, writes questions per topic,
then for each question a misaligned answer (showing the policy's failure modes), a critique of it
against the principle, and the correction (the answer rewritten following the policy instruction).
Near-duplicate questions (MiniLM cosine >= --dedup) are dropped before any answer is asked for.

The prompts are the policy's `synth:` mapping in policies/<policy>/policy.yaml (keys version,
topics, questions, answer, critique, correction). Rows are JSON Lines {question, answer,
correction, topic, critique, provenance: {teacher, prompt_version, policy, generated_at}}, ready
for training (extra fields are ignored). Every question that is not kept (duplicate, empty
answer/critique/correction, correction identical to the answer, teacher error, or left over once
--n rows are kept) goes to the rejects file with a `reason`. If dedup and drops leave fewer than
--n rows, new rounds of topics are asked for, up to --max-rounds.

Teachers:
  http(s)://HOST[:PORT][/v1]   any OpenAI-compatible server (vLLM, llama.cpp, Ollama, a hosted API);
                               the API key comes from the env var --api-key-env ("EMPTY" if unset);
                               --teacher-model defaults to the server's first model; a URL
                               without a path gets /v1.
  NAME or DIR                  a registry model (smollm2-135m-instruct) or a local Hugging Face model
                               directory, run greedily in-process. The embedded 135M model works
                               offline but weakly: use it to try the pipeline, not for training data.
"""

_EPILOG = """\
examples:
  squad synth --policy ethics --teacher http://127.0.0.1:8000/v1 --n 500 --output data/ethics_synth.jsonl
  SQUAD_TEACHER_API_KEY=... squad synth --policy honesty --teacher https://api.example.com/v1 \\
      --teacher-model big-model --n 200 --output data/honesty_synth.jsonl --json
  squad synth --policy helpfulness --teacher smollm2-135m-instruct --n 4 --max-tokens 64 --output /tmp/h.jsonl

exit status: 0 when --n rows were kept; 3 when fewer were (see the rejects file); 2 for a usage,
policy or teacher error.
"""


_DEST = {"topics_per_round": "topics"}  # SynthConfig field -> argparse dest, where they differ


def _config(args):
    from pydantic import ValidationError

    from squad.errors import SquadError
    from squad.data.synth import SynthConfig

    try:
        return SynthConfig(**{f: getattr(args, _DEST.get(f, f)) for f in SynthConfig.model_fields})
    except ValidationError as e:
        err = e.errors()[0]
        dest = _DEST.get(err["loc"][0], err["loc"][0])
        raise SquadError(f"--{dest.replace('_', '-')} {getattr(args, dest)}: {err['msg']}") from None


def cmd_synth(args) -> int:
    from squad.data.synth import load_synth_policy, make_teacher, synthesize

    policy, prompts = load_synth_policy(args.policy, args.policies)  # policy errors before the teacher loads
    cfg = _config(args)
    teacher = make_teacher(args.teacher, args.teacher_model, args.api_key_env, args.timeout, args.retries,
                           args.concurrency, args.seed)
    s = synthesize(policy, prompts, teacher, args.output, cfg, rejects=args.rejects)
    if args.json:
        print(json.dumps(s.as_dict()))
    else:
        short = "" if s.kept >= s.requested else f" (only {s.kept} of {s.requested} after {s.rounds} rounds)"
        why = ", ".join(f"{k} {v}" for k, v in s.reasons.items())
        print(f"{s.policy}: {s.kept} rows kept{short} -> {s.output}, {s.rejected} rejected"
              f"{f' ({why})' if why else ''} -> {s.rejects}; {s.questions} questions from {s.teacher}")
    return 0 if s.kept >= s.requested else 3


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``synth`` to the ``squad`` subparsers ``sub``."""
    s = sub.add_parser("synth", help="generate correction triples for a policy with a teacher LLM",
                       description=_DESCRIPTION, epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("--policy", required=True, help="the criterion, e.g. ethics (a folder under --policies)")
    s.add_argument("--policies", metavar="DIR", help="policies folder (default: the repo's policies/)")
    s.add_argument("--teacher", required=True, metavar="URL|MODEL",
                   help="an OpenAI-compatible base URL (http(s)://...), a registry model name or a model directory")
    s.add_argument("--teacher-model", metavar="ID", help="URL teachers: the model id (default: the server's first)")
    s.add_argument("--api-key-env", default="SQUAD_TEACHER_API_KEY", metavar="VAR",
                   help="URL teachers: env var holding the API key (default SQUAD_TEACHER_API_KEY; unset: 'EMPTY')")
    s.add_argument("--n", type=int, default=100, help="rows to keep (default 100)")
    s.add_argument("--topics", type=int, metavar="K",
                   help="topics asked for per round (default max(3, n // 10))")
    s.add_argument("--questions-per-topic", type=int, default=5, metavar="K",
                   help="questions asked for per topic (default 5)")
    s.add_argument("--dedup", type=float, default=0.9, metavar="COS",
                   help="drop a question whose MiniLM cosine to a kept one is >= COS (default 0.9)")
    s.add_argument("--output", "-o", required=True, metavar="FILE", help="JSON Lines rows (overwritten)")
    s.add_argument("--rejects", metavar="FILE", help="dropped questions with a reason (default: FILE.rejects.jsonl)")
    s.add_argument("--max-tokens", type=int, default=512, metavar="N",
                   help="token limit of each teacher reply (default 512)")
    s.add_argument("--temperature", type=float, default=0.8, metavar="T",
                   help="URL teachers: sampling temperature for topics, questions and misaligned answers, "
                        "for diversity (default 0.8); local teachers are greedy")
    s.add_argument("--edit-temperature", type=float, default=0.2, metavar="T",
                   help="URL teachers: temperature for critiques and corrections, kept low so the "
                        "correction stays close to the answer (default 0.2)")
    s.add_argument("--max-rounds", type=int, default=10, metavar="R",
                   help="rounds of new topics at most before stopping short of --n (default 10)")
    s.add_argument("--timeout", type=float, default=60.0, metavar="S", help="URL teachers: seconds per request (default 60)")
    s.add_argument("--retries", type=int, default=2, metavar="K", help="URL teachers: retries per request (default 2)")
    s.add_argument("--concurrency", type=int, default=8, metavar="K", help="URL teachers: requests in flight (default 8)")
    s.add_argument("--seed", type=int, metavar="S", help="URL teachers: sampling seed sent with each request, where supported")
    s.add_argument("--json", action="store_true", help="print the summary as JSON")
    s.set_defaults(fn=cmd_synth)
    return s
