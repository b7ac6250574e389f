"""Command line of the test bed: ``python -m bed {up,down,status,tools} [--dir DIR]`` (with tests/ on PYTHONPATH)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from bed.controlplane import DEFAULT_DIR, Bed, BedError
from bed.tools import ToolsError, ensure_tools


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bed", description="local Kubernetes test bed")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("up", "start the bed (no-op when up)"), ("down", "stop the bed and remove its files"),
                       ("status", "show the bed's processes; exit code 0 when up")):  # fmt: skip
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("--dir", type=Path, default=DEFAULT_DIR, help=f"state directory (default {DEFAULT_DIR})")
        if name == "up":
            agent = cmd.add_mutually_exclusive_group()
            agent.add_argument("--node-agent", dest="node_agent", action="store_true", default=None,
                               help="start the node agent (default: when tests/bed/nodeagent.py exists)")  # fmt: skip
            agent.add_argument("--no-node-agent", dest="node_agent", action="store_false")
    sub.add_parser("tools", help="download kubectl and helm (cached) and print their paths")
    args = parser.parse_args(argv)

    try:
        if args.command == "tools":
            for name, path in ensure_tools().items():
                print(f"{name}={path}")
            return 0
        bed = Bed(args.dir, node_agent=getattr(args, "node_agent", None), daemon=True)
        if args.command == "up":
            started = time.monotonic()
            bed.start()
            if bed.startup_seconds is None:
                print(f"bed already up in {bed.dir} ({time.monotonic() - started:.1f}s)", file=sys.stderr)
            else:
                print(f"bed up in {bed.startup_seconds:.1f}s: {bed.server}", file=sys.stderr)
            print(f"export KUBECONFIG={bed.kubeconfig}")
            return 0
        if args.command == "down":
            was_up = bed.state_file.exists()
            bed.stop(purge=True)
            print("bed stopped" if was_up else f"no bed in {bed.dir}", file=sys.stderr)
            return 0
        # status
        for line in bed.status_lines():
            print(line)
        return 0 if bed.is_up() else 1
    except (BedError, ToolsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
