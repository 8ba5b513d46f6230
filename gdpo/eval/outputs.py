"""Score generations made elsewhere (`gdpo eval --outputs FILE`) with a task's own checker and the same reports.

A run made on a cluster (vLLM, lm-eval, a paper's released samples) is scored without generating again. The file is
JSON lines, one item a line, in one of two layouts (told apart per line):

- records with an item id and one or more generations: `{"id": ..., "generations": [...], "reference": ...}`
  (`generation`: one text also works). `reference` is optional: without it the item is looked up by id in the task's
  own data. `--outputs-fields id=idx,generations=response,reference=gt,correct=score` renames the fields; `correct`
  names published per-generation correctness flags, and the result then reports the agreement with them.
- an lm-eval samples file (`--log_samples`): `doc_id`, `doc`, `target`, `resps` are read; the generations are all
  the strings of `resps`, the reference is `target`, the id `doc["id"]` (else `doc_id`).

Each generation is scored alone by the task's process_results hook (gdpo.eval.hooks: metakl.verify's math check,
math-verify included, or the refusal judge); an item's metrics are the means over its generations (avg@k), and math
tasks add the unbiased pass@k and maj@k (gdpo.eval.hooks.pass_at_k, majority_index).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from gdpo.eval import hooks
from gdpo.eval.suite import TaskSpec
from metakl.errors import UserError

FIELDS = ("id", "generations", "reference", "correct")


@dataclass
class Output:
    id: str
    generations: list[str]
    reference: str | None = None
    correct: list[bool] | None = None  # published per-generation flags, when the file has them


def parse_fields(text: str | None) -> dict[str, str]:
    """`id=idx,generations=response` → {"id": "idx", "generations": "response", ...} (the rest keep their names)."""
    names = {f: f for f in FIELDS}
    names["correct"] = ""
    for part in filter(None, (p.strip() for p in (text or "").split(","))):
        key, sep, value = part.partition("=")
        if not sep or key.strip() not in FIELDS or not value.strip():
            raise UserError(f"--outputs-fields: expected FIELD=NAME pairs with FIELD one of {', '.join(FIELDS)}, got {part!r}")
        names[key.strip()] = value.strip()
    return names


def read_outputs(path: str | Path, fields: dict[str, str]) -> list[Output]:
    """The records of an outputs file; a malformed line is a UserError naming the file, the line and the field."""
    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise UserError(f"--outputs {p}: cannot read it ({exc.strerror})") from None
    out, seen = [], set()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{p}:{n}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{where}: not a JSON object ({exc.msg}, column {exc.colno})") from None
        if not isinstance(rec, dict):
            raise UserError(f"{where}: expected a JSON object, got {type(rec).__name__}")
        o = _lm_eval_sample(rec, where) if "doc_id" in rec and "resps" in rec else _record(rec, fields, where)
        if o.id in seen:
            raise UserError(f"{where}: field '{fields['id']}': id {o.id!r} appears twice")
        seen.add(o.id)
        out.append(o)
    if not out:
        raise UserError(f"--outputs {p}: no records")
    return out


def _record(rec: dict, fields: dict[str, str], where: str) -> Output:
    id_key, gen_key, ref_key, ok_key = (fields[f] for f in FIELDS)
    if rec.get(id_key) is None or isinstance(rec[id_key], (dict, list)):
        raise UserError(f"{where}: field '{id_key}': expected the item id (a string or number), got {rec.get(id_key)!r}")
    gens = rec.get(gen_key, rec.get("generation") if gen_key == "generations" else None)
    gens = [gens] if isinstance(gens, str) else gens
    if not isinstance(gens, list) or not gens or not all(isinstance(g, str) for g in gens):
        raise UserError(f"{where}: field '{gen_key}': expected a text or a non-empty list of texts, got {_short(rec.get(gen_key))}")
    ref = rec.get(ref_key)
    if ref is not None and not isinstance(ref, (str, int, float)):
        raise UserError(f"{where}: field '{ref_key}': expected the reference answer as a string, got {_short(ref)}")
    correct = None
    if ok_key:
        correct = rec.get(ok_key)
        if not isinstance(correct, list) or len(correct) != len(gens) or not all(isinstance(c, bool) for c in correct):
            raise UserError(f"{where}: field '{ok_key}': expected {len(gens)} true/false flags (one per generation), got {_short(correct)}")
    return Output(str(rec[id_key]), gens, None if ref is None else str(ref), correct)


def _lm_eval_sample(rec: dict, where: str) -> Output:
    gens = list(_strings(rec["resps"]))
    if not gens:
        raise UserError(f"{where}: field 'resps': no generated texts (an lm-eval samples file of a generation task is expected)")
    doc = rec.get("doc") if isinstance(rec.get("doc"), dict) else {}
    target = rec.get("target")
    return Output(str(doc.get("id", rec["doc_id"])), gens, None if target is None else str(target))


def _strings(x: Any):
    if isinstance(x, str):
        yield x
    elif isinstance(x, (list, tuple)):
        for y in x:
            yield from _strings(y)


def _short(x: Any) -> str:
    s = json.dumps(x)
    return s if len(s) <= 60 else s[:57] + "..."


def score_outputs(spec: TaskSpec, outputs: list[Output], rows: dict[str, dict] | None, where: str) -> dict[str, Any]:
    """`items` (per-item values, as the runner keeps them), `metrics` (their names) and `info` (counts, agreement
    with published flags) of `outputs` scored by `spec`'s checker. `rows`: the task's items by id, for records
    without a reference (None: every record must carry one)."""
    cfg = spec.config or {}
    hook = cfg.get("process_results")
    base = getattr(hook, "func", hook)  # a suite with `samples` wraps math_results in a partial
    if cfg.get("output_type") != "generate_until" or base not in (hooks.math_results, hooks.refusal_results):
        raise UserError(f"--outputs: task {spec.name} is not scored from generated text (its math or safety tasks are)")
    items: dict[str, list] = {"doc_id": [], "doc_hash": [], "response": [], "responses": [], "samples_correct": []}
    agree = total = 0
    for i, o in enumerate(outputs):
        doc = _doc_for(o, rows, spec, where)
        if base is hooks.math_results:  # the checker math_results runs, kept per sample for pass@k, maj@k, agreement
            preds, correct = hooks.math_sample_scores(doc["reference"], o.generations)
            k = min(_pass_k(spec) or len(correct), len(correct))
            scores = hooks.sampled_scores(correct, [p is not None for p in preds], pass_k=k, majority=hooks.majority_index(preds))
        else:
            per = [hooks.refusal_results(doc, [g]) for g in o.generations]
            correct = [p[spec.primary] == 1.0 for p in per]
            scores = {m: sum(p[m] for p in per) / len(per) for m in per[0]}
        if o.correct is not None:
            agree += sum(a == b for a, b in zip(correct, o.correct))
            total += len(correct)
        for key, value in (("doc_id", i), ("doc_hash", o.id), ("response", o.generations[0]), ("responses", o.generations),
                           ("samples_correct", correct), *scores.items()):
            items.setdefault(key, []).append(value)
    info: dict[str, Any] = {"records": len(outputs), "generations": sum(len(o.generations) for o in outputs)}
    if total:
        info.update(agreement=agree / total, flags_compared=total)
    return {"items": items, "metrics": list(scores), "info": info}


def _pass_k(spec: TaskSpec) -> int | None:
    """The suite entry's pass_k when it sets `samples` (else k = the item's number of generations)."""
    return spec.decoding.get("pass_k") if spec.decoding.get("samples", 1) > 1 else None


def _doc_for(o: Output, rows: dict[str, dict] | None, spec: TaskSpec, where: str) -> dict:
    if o.reference is not None:
        return {"id": o.id, "reference": o.reference}
    if rows is None or o.id not in rows:
        raise UserError(f"{where}: id {o.id!r} has no reference and is not an item of task {spec.name}'s data; give "
                        f"the reference in the file (--outputs-fields reference=FIELD)")
    return rows[o.id]


def decoding_of(spec: TaskSpec, outputs: list[Output]) -> TaskSpec:
    """The spec as scored from a file: the decoding is unknown, only the number of generations per item is."""
    ks = {len(o.generations) for o in outputs}
    samples = ks.pop() if len(ks) == 1 else None  # None: items have different numbers of generations
    return replace(spec, decoding={"samples": samples, "pass_k": _pass_k(spec) or samples, "source": "outputs file"})
