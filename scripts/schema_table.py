"""Print the record field table generated from harness/schema.py, or write it into docs/record-fields.md
(--write) between the markers <!-- fields:begin --> and <!-- fields:end -->. tests/test_layout.py fails when
that page is stale. (The table lived in README.md until the README became a short front door.)"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from harness.schema import markdown_field_table  # noqa: E402

BEGIN, END = "<!-- fields:begin -->", "<!-- fields:end -->"
FIELDS_DOC = Path(__file__).resolve().parents[1] / "docs" / "record-fields.md"   # tests/test_layout.py reads it


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--write", action="store_true", help="update docs/record-fields.md in place")
    a = p.parse_args()
    table = markdown_field_table()
    if not a.write:
        print(table)
        return 0
    readme = FIELDS_DOC
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        print(f"schema_table: {readme} has no {BEGIN} ... {END} markers", file=sys.stderr)
        return 2
    head, rest = text.split(BEGIN, 1)
    readme.write_text(head + BEGIN + "\n" + table + "\n" + END + rest.split(END, 1)[1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
