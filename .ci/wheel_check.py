"""Check the wheel as a user gets it (run by `make wheel-check` with the python of a fresh, non-editable install;
its dependencies are those of the project's virtualenv, seen through one .pth line, never the source tree).

Run from outside the source tree, so nothing can be read from the checkout: presets and templates must come from
inside the installed wheel. Steps: where metakl and its annotations are; `metakl ingest --list-presets`; a real
`metakl ingest` (a preset) then a real `metakl generate` of 2 prompts with the transformers backend and the embedded
SmolLM2 (renders generate/math.j2); `metakl env --json`. Exit 0 when every check holds; each failure is printed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "ingest" / "local" / "gsm8k_train.jsonl"


def metakl(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "metakl"  # the console script of this install
    start = time.monotonic()
    proc = subprocess.run([str(exe), *args], cwd=cwd, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""})
    print(f"$ metakl {' '.join(args)}  -> exit {proc.returncode} in {time.monotonic() - start:.1f} s", flush=True)
    if proc.returncode != 0:
        print(proc.stdout[-2000:], proc.stderr[-4000:], sep="\n", file=sys.stderr)
    return proc


def main() -> int:
    failures: list[str] = []

    def check(ok: bool, what: str) -> None:
        print(("ok    " if ok else "FAIL  ") + what, flush=True)
        if not ok:
            failures.append(what)

    site = Path(sysconfig.get_paths()["purelib"]).resolve()
    with tempfile.TemporaryDirectory(prefix="metakl-wheel-check-") as tmp:
        work = Path(tmp)
        probe = subprocess.run(
            [sys.executable, "-c", "import json, sys, metakl, metakl.resources as r; "
             "print(json.dumps([metakl.__file__, str(r.annotations_root()), r.preset_names(), "
             "[getattr(f, \"__module__\", \"\") for f in sys.meta_path]]))"],
            cwd=work, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ""},
        )
        check(probe.returncode == 0, f"import metakl ({probe.stderr.strip()[-300:]})")
        if probe.returncode == 0:
            module_file, root, presets, finders = json.loads(probe.stdout)
            # the project virtualenv's editable install (a finder of the source tree) must not be active here
            check(not any(f.startswith("__editable__") for f in finders), f"no editable finder: {finders}")
            check(Path(module_file).resolve().is_relative_to(site), f"metakl imported from the install: {module_file}")
            check(Path(root).resolve().is_relative_to(site), f"annotations inside the installed package: {root}")
            check("gsm8k" in presets and len(presets) >= 20, f"{len(presets)} ingest presets in the wheel")
            templates = sorted(p.relative_to(Path(root) / "templates").as_posix()
                               for p in Path(root).glob("templates/*/*.j2"))
            check({"generate/math.j2", "annotate/math.j2", "publish/card.j2"} <= set(templates),
                  f"{len(templates)} templates in the wheel")

        listed = metakl("ingest", "--list-presets", cwd=work)
        check(listed.returncode == 0 and "gsm8k" in listed.stdout and "xstest" in listed.stdout,
              "metakl ingest --list-presets lists the presets")
        listed = metakl("import-responses", "--list-presets", cwd=work)
        check(listed.returncode == 0 and "qwen25math" in listed.stdout, "metakl import-responses --list-presets")

        ingested = metakl("ingest", str(FIXTURE), "--preset", "gsm8k", "--limit", "2", "--out", "ingest", cwd=work)
        check(ingested.returncode == 0 and (work / "ingest" / "data.parquet").exists(), "metakl ingest with a preset")
        if ingested.returncode == 0:
            generated = metakl("generate", "ingest", "--out", "generate", "--backend", "transformers", "-n", "1",
                               "--max-tokens", "8", "--no-cache", cwd=work)
            report_path = work / "generate" / "generate_report.json"
            check(generated.returncode == 0 and report_path.exists(), "metakl generate (transformers, SmolLM2)")
            if report_path.exists():
                report = json.loads(report_path.read_text())
                refs = json.dumps(report.get("templates", report))
                check("generate/math@" in refs, f"generate rendered the packaged template ({refs[:120]})")
                import pyarrow.parquet as pq

                table = pq.read_table(work / "generate" / "data.parquet")
                responses = table.column("responses").to_pylist()
                check(len(responses) == 2 and all(len(r) == 1 and r[0]["text"] for r in responses),
                      "2 prompts with 1 non-empty response each")

        env = metakl("env", "--json", cwd=work)
        check(env.returncode == 0 and Path(json.loads(env.stdout or "{}").get("annotations", "/")).resolve()
              .is_relative_to(site), "metakl env --json names the installed annotations")

    print(f"wheel check: {'FAILED: ' + '; '.join(failures) if failures else 'all checks passed'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
