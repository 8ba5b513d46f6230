"""Generate stage: G teacher responses per prompt through metakl.llm.

Each row is rendered with the template of its domain (annotations/templates/generate/<domain>.j2) and sampled n
times. Every response is stored: `text` is the raw completion, `reasoning` the part inside <think>...</think> (or
similar tags), `answer` the extracted final answer (None when there is none); reward and advantage stay empty until
`metakl reward`.

Reasoning reconstruction (the paper's §Data step 3): the prompt carries the reference solution (from the row's meta)
and the reference answer (template generate/reconstruct.j2), asking for a reasoning + response pair with the answer
boxed. Each output is validated: its boxed answer must equal the reference; a failure is recorded in the row's
errors and not kept. Which rows are reconstructed is each row's *mode* (`row_mode`):

- `reconstruct_domains` (e.g. [math]): the rows of those domains are reconstructed, the others sampled with their
  domain template, in the same requests; a row of such a domain without a reference solution falls back to sampling
  (counted in the report, not an error: the paper recipe wants a group for every prompt).
- `reconstruct` (every domain, the older whole-stage switch): a row without a solution, and every safety row, is
  skipped with a `no_solution` error, as before.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from typing import Any

from datasets import Dataset, Features

from metakl.config import check_settings, setting
from metakl.errors import UserError
from metakl.schema import DOMAINS, STAGE_FEATURES, choice_letter, error
from metakl.stage import StageResult, row_errors, stage
from metakl.templates import load_template
from metakl.verify import MathPool, answer_kind, answers_match, extract_answer, last_boxed, split_reasoning

STAGE = "generate"
# Error kinds that judge one response, not the run: they do not count toward --max-error-rate (metakl.stage.stage).
VERDICTS = ("reconstruct_mismatch",)
SOLUTION_KEYS = ("solution", "rationale", "answer", "cot", "explanation")
# A row's mode: how its request is made (report key `rows_by_mode`).
RECONSTRUCTED, SAMPLED, FELL_BACK, SKIPPED = "reconstructed", "sampled", "fell_back", "skipped"


@dataclass
class GenerateConfig:
    """What `metakl generate` flags and a config's `generate:` section set (one declaration: metakl.config.setting)."""

    n: int = setting(4, flags=("-n", "--n"), min=1, help="Responses per prompt (G; the paper uses 10).")
    temperature: float = setting(0.7, min=0.0, max=2.0, help="Sampling temperature.")
    top_p: float = setting(0.95, above=0.0, max=1.0, help="Nucleus sampling top_p.")
    max_tokens: int = setting(1024, min=1, help="Token limit per response (cut responses get finish_reason 'length').")
    seed: int | None = setting(0, help="Sampling seed (part of the cache key).")
    reconstruct: bool = setting(False, flags=("--reconstruct",), help=(
        "Reconstruct every row: rewrite the reference solution (in meta) as reasoning + boxed answer; keep only "
        "outputs whose answer equals the reference. A row without a solution (and every safety row) is skipped with "
        "a no_solution error. For some domains only, and the others sampled: --reconstruct-domain."))
    reconstruct_domains: tuple[str, ...] = setting((), flags=("--reconstruct-domain",), help=(
        "Reconstruct the rows of this domain (repeatable; e.g. --reconstruct-domain math, YAML reconstruct_domains: "
        "[math]) as --reconstruct does, and sample the other domains with their own template in the same stage. A "
        "row of such a domain without a reference solution falls back to sampling (counted as fell_back in the "
        "report). math or general (safety rows have no reference solution)."))
    solution_keys: tuple[str, ...] = setting(SOLUTION_KEYS, flags=("--solution-key",), help=(
        "Meta key of the reference solution for reconstruction (repeatable; default: solution, rationale, answer, "
        "cot, explanation)."))
    replace: bool = setting(False, flags=("--replace",), help="Drop the responses rows already have (default: append).")
    templates_dir: str | None = setting(None, path=True, help=(
        "Your own templates folder (generate/<domain>.j2, generate/reconstruct.j2)."))
    math_timeout: float = setting(5.0, above=0.0, help="Seconds per math comparison (reconstruction).")

    def __post_init__(self) -> None:
        check_settings(self, STAGE)
        self.solution_keys = tuple(self.solution_keys)
        self.reconstruct_domains = tuple(dict.fromkeys(self.reconstruct_domains))  # as given, without repeats
        if self.reconstruct and self.reconstruct_domains:
            raise UserError(f"{STAGE}: reconstruct (every domain) and reconstruct_domains (some) exclude each other; "
                            f"give one")
        for domain in self.reconstruct_domains:
            if domain not in DOMAINS or domain == "safety":
                why = " (safety rows have no reference solution)" if domain == "safety" else ""
                raise UserError(f"{STAGE}: reconstruct_domains: expected math or general, got {domain!r}{why}")

    def reconstructs(self, domain: str) -> bool:
        """Whether rows of `domain` are reconstructed (with a solution) rather than sampled."""
        return self.reconstruct or domain in self.reconstruct_domains

    def plan_note(self) -> str:
        """What `metakl run --dry-run` shows beside the stage: which rows carry their solution in the prompt."""
        if self.reconstruct:
            return "reconstruct: every domain"
        if self.reconstruct_domains:
            return f"reconstruct: {', '.join(self.reconstruct_domains)}; sample: the rest"
        return ""


def reference_solution(row: dict[str, Any], keys: tuple[str, ...]) -> str | None:
    """The worked solution kept in the row's meta under the first of `keys` present."""
    try:
        meta = json.loads(row.get("meta") or "{}")
    except json.JSONDecodeError:
        return None
    if not isinstance(meta, dict):
        return None
    for key in keys:
        value = meta.get(key)
        if isinstance(value, str) and value.strip():
            return value
    return None


def row_mode(row: dict[str, Any], cfg: GenerateConfig) -> tuple[str, str | None]:
    """(mode, reference solution) of one row: RECONSTRUCTED with its solution, SAMPLED, FELL_BACK (a reconstructed
    domain, no solution: sampled) or SKIPPED (`reconstruct` for every domain, no solution: no request)."""
    if not cfg.reconstructs(row["domain"]):
        return SAMPLED, None
    solution = None if row["domain"] == "safety" else reference_solution(row, cfg.solution_keys)
    if solution is not None:
        return RECONSTRUCTED, solution
    return (SKIPPED if cfg.reconstruct else FELL_BACK), None


def _choices(row: dict[str, Any]) -> list[dict[str, str]]:
    return [{"letter": choice_letter(i), "text": c} for i, c in enumerate(row.get("choices") or [])]


def make_response(text: str, kind: str | None, n_choices: int | None, model: str, finish_reason: str | None,
                  reasoning: str | None = None) -> dict[str, Any]:
    """One stored response. `reasoning`: what the server returned in its own reasoning field (then `text` is the
    content it sent beside it); otherwise the <think> block of `text`, so all backends store reasoning alike."""
    if not reasoning:
        reasoning, _ = split_reasoning(text)
    return {
        "text": text,
        "reasoning": reasoning,
        "answer": extract_answer(text, kind, n_choices=n_choices) if kind else None,
        "reward": None,
        "advantage": None,
        "model": model,
        "finish_reason": finish_reason,
    }


@stage(STAGE, GenerateConfig, needs_backend=True, batched=True,
       requires={"id": "the request cache key", "domain": "the prompt template",
                 "question": "the prompt", "reference": "reconstruction and answer checks"},
       provides=("responses",), verdicts=VERDICTS)
def generate(ds: Dataset, config: GenerateConfig, *, backend, progress: bool = False, executor=None) -> StageResult:
    """Sample `config.n` responses per row with `backend` (a metakl.llm backend); `executor`: where the batches run
    (metakl.executors; default: here, in one batch)."""
    from metakl.executors import LOCAL, merge_stats

    if backend is None:
        raise UserError("generate needs a model backend")
    features = Features({**ds.features, "responses": STAGE_FEATURES["responses"]})
    out, parts = (executor or LOCAL).map_batches(ds, generate_batch, features,
                                                 kwargs={"config": config, "backend": backend},
                                                 progress=progress, desc=STAGE)
    stats = merge_stats(parts)
    modes = stats.get("rows_by_mode", {})
    report = {
        "mode": "reconstruct" if config.reconstruct else "mixed" if config.reconstruct_domains else "sample",
        "reconstruct_domains": list(DOMAINS) if config.reconstruct else list(config.reconstruct_domains),
        # rows per mode; reconstruct_rejected below counts responses (a row can lose some of its n, or all)
        "rows_by_mode": {m: modes.get(m, 0) for m in (RECONSTRUCTED, SAMPLED, FELL_BACK, SKIPPED)},
        "fell_back_examples": stats.get("fell_back_ids", [])[:10],
        "templates": stats.get("templates", []),
        **{key: stats.get(key, 0) for key in ("requests", "failed_requests", "rows_skipped", "responses_generated",
                                              "responses_stored", "reconstruct_rejected", "with_reasoning",
                                              "reasoning_tokens")},
        "answer_extracted_rate": round(stats["answer_extracted"] / stats["with_kind"], 6) if stats.get("with_kind") else None,
        "truncated": stats.get("truncated", 0),
        "responses_by_model": stats.get("responses_by_model", {}),  # several teachers: what each gave
    }
    return StageResult(out, report)


def generate_batch(rows: list[dict[str, Any]], *, config: GenerateConfig, backend, progress: bool = False,
                   ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Responses for `rows` (one request per row, n samples each) and the batch's additive statistics."""
    cfg = config
    requests, owners, templates, modes = _requests(rows, cfg)
    new, failed_requests, reasoning_tokens, n_teachers = _ask_teachers(rows, requests, owners, backend, modes, cfg,
                                                                        progress)

    # Only reconstructions are checked against the reference; sampled responses are all kept (reward scores them).
    checked = [j for j, (ri, _) in enumerate(new) if modes[ri] == RECONSTRUCTED]
    accepted = [True] * len(new)
    valid, rejected = _validate(rows, [new[j] for j in checked], cfg) if checked else ([], 0)
    for j, good in zip(checked, valid):
        accepted[j] = good
    for (ri, resp), ok in zip(new, accepted):
        if ok:
            rows[ri]["responses"].append(resp)

    stored = [resp for (_, resp), ok in zip(new, accepted) if ok]
    with_kind = [r for (ri, r), ok in zip(new, accepted) if ok and rows[ri]["domain"] != "safety"]
    stats = {
        "templates": sorted(t.ref for t in templates.values()),
        "requests": len(requests) * n_teachers,
        "failed_requests": failed_requests,
        "rows_skipped": modes.count(SKIPPED),
        "rows_by_mode": dict(Counter(modes)),
        "fell_back_ids": [row["id"] for row, mode in zip(rows, modes) if mode == FELL_BACK],
        "responses_generated": len(new),
        "responses_stored": len(stored),
        "reconstruct_rejected": rejected,
        "with_reasoning": sum(bool(r["reasoning"]) for r in stored),
        "reasoning_tokens": reasoning_tokens,
        "responses_by_model": dict(Counter(r["model"] for r in stored)),
        "answer_extracted": sum(r["answer"] is not None for r in with_kind),
        "with_kind": len(with_kind),
        "truncated": sum(r["finish_reason"] == "length" for r in stored),
    }
    return rows, stats


def _requests(rows: list[dict[str, Any]], cfg: GenerateConfig) -> tuple[list[dict], list[int], dict, list[str]]:
    """One request per row (the template of its mode rendered), as ChatRequest arguments: (requests, the row of each,
    the templates used, each row's mode). Resets each row's errors of this stage (and its responses with `replace`);
    a SKIPPED row gets an error instead of a request. The rendered messages are the request cache key's main part, so
    a row whose mode changes asks anew."""
    templates = {}
    requests, owners, modes = [], [], []
    for ri, row in enumerate(rows):
        row["errors"] = row_errors(row.get("errors"), STAGE)
        if cfg.replace or row.get("responses") is None:
            row["responses"] = []
        mode, solution = row_mode(row, cfg)
        modes.append(mode)
        if mode == SKIPPED:
            why = "safety prompts have no reference solution" if row["domain"] == "safety" else (
                f"no reference solution in meta (looked for {', '.join(cfg.solution_keys)})")
            row["errors"].append(error(STAGE, "no_solution", why))
            continue
        name = "reconstruct" if mode == RECONSTRUCTED else row["domain"]
        if name not in templates:
            templates[name] = load_template("generate", name, cfg.templates_dir)
        variables: dict[str, Any] = {"question": row["question"], "choices": _choices(row)}
        if mode == RECONSTRUCTED:
            variables.update(solution=solution, reference=row["reference"])
        requests.append(dict(
            messages=templates[name].render_messages(**variables), n=cfg.n, temperature=cfg.temperature,
            top_p=cfg.top_p, max_tokens=cfg.max_tokens, seed=cfg.seed, tag=row["id"],
        ))
        owners.append(ri)
    return requests, owners, templates, modes


def _ask_teachers(rows: list[dict[str, Any]], requests: list[dict], owners: list[int], backend: Any,
                  modes: list[str], cfg: GenerateConfig, progress: bool,
                  ) -> tuple[list[tuple[int, dict[str, Any]]], int, int, int]:
    """Every teacher's answers as (row, response), a row's together; failed requests become row errors. Returns
    (responses, failed requests, reasoning tokens, teachers)."""
    from metakl.llm import ChatRequest

    # Several teachers (llm.teachers): each answers every prompt with its own n; the group is all of them.
    teachers = getattr(backend, "members", None) or [None]
    new: list[tuple[int, dict[str, Any]]] = []
    failed_requests = reasoning_tokens = 0

    def ask(teacher) -> list:
        asker = backend if teacher is None else teacher.backend
        n = cfg.n if teacher is None or teacher.n is None else teacher.n
        return asker.generate_all([ChatRequest(**{**r, "n": n}) for r in requests], progress=progress) if requests else []

    if len(teachers) == 1:
        answers = [ask(teachers[0])]
    else:  # at the same time: each teacher waits on its own server
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(len(teachers)) as pool:
            answers = list(pool.map(ask, teachers))
    for teacher, results in zip(teachers, answers):
        for result in results:
            ri = owners[result.index]
            row = rows[ri]
            if not result.ok:
                failed_requests += 1
                who = "" if teacher is None else f"teacher {teacher.model}: "
                row["errors"].append(error(STAGE, "llm_error", (who + str(result.error))[:300]))
                continue
            c = result.completion
            reasoning_tokens += c.reasoning_tokens
            kind = answer_kind(row["domain"], row.get("reference"), row.get("choices"))
            if modes[ri] == RECONSTRUCTED and kind is None:  # a reconstruction always ends in a boxed answer
                kind = "text"
            n_choices = len(row.get("choices") or []) or None
            for k, text in enumerate(c.texts):
                finish = c.finish_reasons[k] if k < len(c.finish_reasons) else None
                new.append((ri, make_response(text, kind, n_choices, c.model, finish, c.reasoning_of(k))))
    new.sort(key=lambda item: item[0])  # a row's responses together, teachers in the order listed
    return new, failed_requests, reasoning_tokens, len(teachers)


def _validate(rows: list[dict], new: list[tuple[int, dict]], cfg: GenerateConfig) -> tuple[list[bool], int]:
    """Reconstructed responses must end in a boxed answer equal to the reference (math-verify for math)."""
    ok = [False] * len(new)
    unboxed = set()
    math_jobs, math_pairs = [], []
    for j, (ri, resp) in enumerate(new):
        row = rows[ri]
        _, final = split_reasoning(resp["text"])
        boxed = last_boxed(final)
        if boxed is None:
            unboxed.add(j)
            continue
        kind = answer_kind(row["domain"], row.get("reference"), row.get("choices")) or "text"
        if kind == "math":
            math_jobs.append(j)
            math_pairs.append((row["reference"], boxed))
        else:
            answer = extract_answer(resp["text"], kind, n_choices=len(row.get("choices") or []) or None)
            ok[j] = answers_match(kind, row["reference"], answer)
    if math_pairs:
        with MathPool(timeout=cfg.math_timeout) as pool:
            for j, result in zip(math_jobs, pool.check(math_pairs)):
                ok[j] = result.equal
    rejected = 0
    for j, (ri, resp) in enumerate(new):
        if not ok[j]:
            rejected += 1
            reference = rows[ri]["reference"][:80]
            if j in unboxed:  # the answer extracted otherwise ("the answer is 10") may equal it: say what failed
                cut = " (cut at max_tokens)" if resp["finish_reason"] == "length" else ""
                why = f"no \\boxed{{}} answer after the reasoning{cut}; the reference is {reference!r}"
            else:
                why = f"answer {str(resp['answer'])[:80]!r} does not equal the reference {reference!r}"
            rows[ri]["errors"].append(error(STAGE, "reconstruct_mismatch", f"reconstruction rejected: {why}"))
    # One rejected answer of G is a verdict on that answer (not counted toward --max-error-rate, see VERDICTS); a row
    # left with none is a failure, as a failed request is: a teacher or template that never matches stops the run.
    tried, kept = Counter(ri for ri, _ in new), Counter(ri for (ri, _), good in zip(new, ok) if good)
    for ri, n in tried.items():
        if not kept[ri]:
            rows[ri]["errors"].append(error(STAGE, "reconstruct_all_rejected",
                                            f"all {n} reconstructions rejected: the row has no response from them"))
    return ok, rejected
