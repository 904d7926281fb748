"""The README's Kafka ACL section, rendered from the grants the code checks and the tests
apply (:mod:`streams.kafka.access`), for the default settings.

    python -m deploy.acl_docs          # rewrite the section in README.md
    python -m deploy.acl_docs --check  # exit 1 if README.md differs (the unit test does this)
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from streams.kafka.access import Grant, acl_commands, producer_grants, worker_grants
from streams.settings import Settings

README = Path(__file__).resolve().parent.parent / "README.md"
BEGIN, END = "<!-- acls:begin (python -m deploy.acl_docs) -->", "<!-- acls:end -->"


def _shell(command: list[str]) -> str:
    words = [f'"{w}"' if w.startswith("$") else shlex.quote(w) for w in command]
    lines, line = [], ""
    for word in words:  # a line break before each option, so that a reader can follow it
        if word.startswith("--") and line and word not in ("--add",) and len(line) > 60:
            lines.append(line)
            line = "    "
        line = f"{line} {word}" if line.strip() else f"{line}{word}"
    lines.append(line)
    return " \\\n".join(lines)


def _rows(principal: str, grants: list[Grant]) -> list[str]:
    rows = []
    for grant in grants:
        pattern = " (prefix)" if grant.pattern == "prefixed" else ""
        rows.append(f"| `User:{principal}` | {grant.resource} `{grant.name}`{pattern} | "
                    f"{', '.join(grant.operations)} | {grant.why} |")
    return rows


def markdown(settings: Settings | None = None) -> str:
    settings = settings or Settings(kafka_bootstrap_servers="unused", worker_id="WORKER_ID")
    worker, producer = worker_grants(settings), producer_grants(settings)
    parts = [BEGIN, "", "| principal | resource | operations | why |", "|---|---|---|---|",
             *_rows("worker", worker), *_rows("producer", producer), "", "```sh"]
    for principal, grants in (("worker", worker), ("producer", producer)):
        parts += [_shell(command) for command in acl_commands(principal, grants)]
    parts += ["```", "", END]
    return "\n".join(parts)


def rewrite(text: str, section: str) -> str:
    start, end = text.index(BEGIN), text.index(END) + len(END)
    return text[:start] + section + text[end:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only compare")
    args = parser.parse_args(argv)
    text = README.read_text()
    wanted = rewrite(text, markdown())
    if args.check:
        return 0 if wanted == text else 1
    README.write_text(wanted)
    return 0


if __name__ == "__main__":
    sys.exit(main())
