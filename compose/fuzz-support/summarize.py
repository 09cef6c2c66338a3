"""The report of compose/fuzz: reads the NDJSON event stream of every schemathesis run and
prints a Markdown summary: per run and per operation the test cases and requests sent, then
every distinct finding (operation, check, what was seen) with how often it came up and a test
case id to replay. The last line is `RESULT: clean` or `RESULT: findings`.

Usage: summarize.py REPORT_DIR SEED MAX_EXAMPLES DURATION RUN=EXIT_STATUS... [SERVICE-exited=1...]
"""

import collections
import json
import pathlib
import sys


def read_run(path):
    """Counts and findings of one run's NDJSON file."""
    operations = collections.defaultdict(lambda: {"cases": 0, "requests": 0, "failed": 0})
    findings = collections.OrderedDict()
    errors = []
    for line in path.read_text().splitlines():
        event = json.loads(line)
        kind, body = next(iter(event.items()))
        if kind == "NonFatalError":
            value = body["value"]
            errors.append(f"{body.get('label', '?')}: {value['type']}: {value['message']}")
        elif kind == "FatalError":
            errors.append(f"fatal: {json.dumps(body)[:500]}")
        if kind != "ScenarioFinished":
            continue
        recorder = body["recorder"]
        label = recorder["label"]
        counts = operations[label]
        counts["cases"] += len(recorder.get("cases", {}))
        counts["requests"] += len(recorder.get("interactions", {}))
        for case_id, checks in recorder.get("checks", {}).items():
            failed = [check for check in checks if check["status"] == "failure"]
            if failed:
                counts["failed"] += 1
            for check in failed:
                failure = check["failure_info"]["failure"]
                key = (label, check["name"], failure["title"], failure["message"].strip())
                seen = findings.setdefault(key, {"count": 0, "case": case_id})
                seen["count"] += 1
    return operations, findings, errors


def cell(text):
    return text.replace("|", "\\|").replace("\n", "; ")


def main():
    report_dir = pathlib.Path(sys.argv[1])
    seed, max_examples, duration = sys.argv[2:5]
    statuses = dict(arg.split("=", 1) for arg in sys.argv[5:])
    out = [
        "# compose/fuzz report",
        "",
        f"schemathesis, phases examples + coverage + fuzzing, at most {max_examples} examples per "
        f"operation and phase, seed {seed}, {duration} in all.",
        "",
        "| run | operations | test cases | requests | failing cases | errors | exit |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    details = []
    all_findings = []
    total_cases = total_requests = 0
    any_errors = False
    for run, status in statuses.items():
        if run.endswith("-exited"):
            out.append(f"| {run[: -len('-exited')]} | the service exited during the run | | | | | |")
            any_errors = True
            continue
        path = report_dir / f"{run}.ndjson"
        if not path.exists():
            out.append(f"| {run} | - | - | - | - | no report | {status} |")
            any_errors = True
            continue
        operations, findings, errors = read_run(path)
        cases = sum(op["cases"] for op in operations.values())
        requests = sum(op["requests"] for op in operations.values())
        failed = sum(op["failed"] for op in operations.values())
        total_cases += cases
        total_requests += requests
        any_errors = any_errors or bool(errors) or status not in ("0", "1")
        out.append(
            f"| {run} | {len(operations)} | {cases} | {requests} | {failed} | {len(errors)} "
            f"| {status} |"
        )
        details.append(f"### {run}")
        details.append("")
        details.append("| operation | test cases | requests | failing cases |")
        details.append("|---|---:|---:|---:|")
        for label in sorted(operations):
            op = operations[label]
            details.append(f"| `{label}` | {op['cases']} | {op['requests']} | {op['failed']} |")
        details.append("")
        for error in errors:
            details.append(f"- error: {cell(error)}")
        if errors:
            details.append("")
        for (label, check, title, message), seen in findings.items():
            all_findings.append((run, label, check, title, message, seen))
    out.append(f"| all | | {total_cases} | {total_requests} | | | |")
    out.append("")
    if all_findings:
        out.append(f"## Findings ({len(all_findings)} distinct)")
        out.append("")
        out.append("| run | operation | check | what | times | replay |")
        out.append("|---|---|---|---|---:|---|")
        for run, label, check, title, message, seen in all_findings:
            out.append(
                f"| {run} | `{label}` | {check} | {cell(title)}: {cell(message)} | "
                f"{seen['count']} | `{seen['case']}` |"
            )
        out.append("")
        out.append("Each run's log (`<run>.log` here) has a curl command per finding.")
        out.append("")
    out.append("## Per operation")
    out.append("")
    out.extend(details)
    clean = not all_findings and not any_errors
    out.append("RESULT: clean" if clean else "RESULT: findings")
    print("\n".join(out))


if __name__ == "__main__":
    main()
