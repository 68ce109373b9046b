"""`make bench`: run every benchmark, one JSON object per line on stdout.

    python -m benchmarks [NAME ...]

`trainer_quality` (students trained side by side: about 30 minutes on 2 CPU cores) and `student_bases` (the
tiny student vs gemma3-270m + LoRA: `--budget cpu` within 45 minutes) run only when named.
"""

from __future__ import annotations

import subprocess
import sys

# In the order they were added; each is a module with a main() printing one JSON line.
BENCHES = ["sdk_emit", "ingest", "router", "dataset_build", "otlp_ingest"]
ON_REQUEST = ["trainer_quality", "student_bases"]


def main(argv: list[str]) -> int:
    names = argv or BENCHES
    unknown = sorted(set(names) - set(BENCHES) - set(ON_REQUEST))
    if unknown:
        print(f"unknown bench(es): {', '.join(unknown)}; known: {', '.join(BENCHES + ON_REQUEST)}", file=sys.stderr)
        return 2
    failed = []
    for name in names:
        print(f"== bench {name}", file=sys.stderr, flush=True)
        if subprocess.run([sys.executable, "-m", f"benchmarks.{name}"]).returncode != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
