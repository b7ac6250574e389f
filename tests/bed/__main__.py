"""Command line of the test bed (with tests/ on PYTHONPATH):

    python -m bed up|down|status [--dir DIR] [--node real|none]
    python -m bed exec [--dir DIR] -- CMD...        # CMD inside the bed's network namespace (node=real)
    python -m bed image build --context DIR [--file F] --tag NAME [--build-arg K=V]...   # prints the reference
    python -m bed tools
"""

from __future__ import annotations

import argparse
import subprocess
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
            cmd.add_argument("--node", choices=("real", "none"), default=None,
                             help="the node: real (kubelet, containerd, runc) or none, the control plane alone "
                                  "(default: $BED_NODE, else real)")  # fmt: skip
    run = sub.add_parser("exec", help="run a command inside the bed's network namespace (KUBECONFIG set)")
    run.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    run.add_argument("argv", nargs=argparse.REMAINDER, help="-- CMD [ARGS...]")
    image = sub.add_parser("image", help="images in the bed's registry")
    image_sub = image.add_subparsers(dest="image_command", required=True)
    build = image_sub.add_parser("build", help="build and push an image; prints the reference pods should use")
    build.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    build.add_argument("--context", type=Path, required=True)
    build.add_argument("--file", type=Path, default=None, help="Dockerfile (default: CONTEXT/Dockerfile)")
    build.add_argument("--tag", required=True, help="NAME[:TAG], e.g. shop:dev")
    build.add_argument("--build-arg", action="append", default=[], metavar="K=V")
    sub.add_parser("tools", help="download kubectl and helm (cached) and print their paths")
    args = parser.parse_args(argv)

    try:
        if args.command == "tools":
            for name, path in ensure_tools().items():
                print(f"{name}={path}")
            return 0
        if args.command == "exec":
            return _exec(Bed(args.dir), args.argv)
        if args.command == "image":
            print(_image_build(Bed(args.dir), args))
            return 0
        bed = Bed(args.dir, node=getattr(args, "node", None),
                  daemon=True)  # fmt: skip
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


def _exec(bed: Bed, argv: list[str]) -> int:
    """Run ``argv`` in the network namespace with the bed's in-namespace kubeconfig; returns its exit code."""
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        raise BedError("usage: python -m bed exec [--dir DIR] -- CMD [ARGS...]")
    if not bed.is_up():
        raise BedError(f"no bed is up in {bed.dir}")
    return subprocess.run(bed.exec_cmd(argv), env=bed.netns_env(), check=False).returncode


def _image_build(bed: Bed, args: argparse.Namespace) -> str:
    """Build with bed.images (buildah, cached by content) and push to the bed's registry; the pods' reference."""
    try:
        from bed import images  # type: ignore[attr-defined,unused-ignore]
    except ImportError as exc:
        raise BedError("image building needs tests/bed/images.py (buildah + mmdebstrap), not in this tree") from exc
    if not bed.is_up():
        raise BedError(f"no bed is up in {bed.dir}")
    build_args = dict(item.split("=", 1) for item in args.build_arg)
    name = args.tag if ":" in args.tag.rsplit("/", 1)[-1] else f"{args.tag}:latest"
    local = images.build(args.context, args.file, name, build_args)
    return str(images.push(local, f"{bed.registry}/{name}", bed.netns_cmd()))


if __name__ == "__main__":
    sys.exit(main())
