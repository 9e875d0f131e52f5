"""Write the NodePools' disruption budgets from include/scheduling/windows.yaml.

    python scripts/gen_disruption_budgets.py          # rewrite k8s/karpenter/nodepools.yaml
    python scripts/gen_disruption_budgets.py --check  # exit 1 if the file is out of date
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from include.scheduling import budgets_file, windows  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only report whether the file is current")
    args = parser.parse_args(argv)
    path = budgets_file.nodepools_file()
    current = path.read_text()
    wanted = budgets_file.render(current, windows.load(windows.WINDOWS_FILE), budgets_file.pool_names())
    if current == wanted:
        print(f"{path.name}: budgets match windows.yaml")
        return 0
    if args.check:
        print(f"{path.name}: budgets differ from windows.yaml; run scripts/gen_disruption_budgets.py",
              file=sys.stderr)
        return 1
    path.write_text(wanted)
    print(f"{path.name}: budgets rewritten from windows.yaml")
    return 0


if __name__ == "__main__":
    sys.exit(main())
