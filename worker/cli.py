"""`dfmod`: the worker and the tools around it.

    dfmod worker                 run a streaming worker (settings from DFMOD_* variables)
    dfmod produce PATH...        publish media events for local files
    dfmod verdicts               follow the verdict topic, one JSON line per verdict
    dfmod scan PATH...           score files in-process with ONNX Runtime, no servers
    dfmod settings               print the effective settings as JSON (secrets masked)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from worker.settings import WorkerSettings


def _worker(args: argparse.Namespace) -> int:
    from worker import logs
    from worker.infer.triton import TritonBackend
    from worker.service import Worker

    settings = WorkerSettings()
    logs.configure(settings.log_level)
    backend = TritonBackend(settings.triton)
    backend.wait_ready(settings.triton.ready_timeout_s)
    worker = Worker(settings, backend)
    worker.install_signal_handlers()
    worker.run()
    return 0


def _produce(args: argparse.Namespace) -> int:
    from worker.produce import event_for_file, produce_events

    settings = WorkerSettings()
    events = [event_for_file(Path(p), args.mode, settings.fetch.max_inline_bytes, args.source) for p in args.paths]
    produce_events(settings.kafka, events, content_mode=args.content_mode)
    for path, event in zip(args.paths, events, strict=True):
        print(json.dumps({"id": event.id, "path": str(path)}), flush=True)
    return 0


def _verdicts(args: argparse.Namespace) -> int:
    from worker.follow import follow

    wanted = set(args.ids or [])
    if args.ids_file:
        wanted |= {json.loads(line)["id"] for line in Path(args.ids_file).read_text().splitlines() if line.strip()}
    seen = 0
    for verdict in follow(WorkerSettings().kafka, from_beginning=args.from_beginning, timeout_s=args.timeout):
        if wanted and verdict.get("id") not in wanted:
            continue
        print(json.dumps(verdict), flush=True)
        seen += 1
        if wanted:
            wanted.discard(verdict["id"])
            if not wanted:
                return 0
        if args.count and seen >= args.count:
            return 0
    return 0 if not wanted else 1


def _scan(args: argparse.Namespace) -> int:
    from worker.scan import scan

    settings = WorkerSettings()
    worst = 0
    for verdict in scan([Path(p) for p in args.paths], Path(args.model_dir), settings):
        print(verdict.model_dump_json(), flush=True)
        if verdict.data.status in ("error",):
            worst = 1
    return worst


def _settings(args: argparse.Namespace) -> int:
    print(WorkerSettings().model_dump_json(indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dfmod", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("worker", help="run a streaming worker").set_defaults(func=_worker)

    p = sub.add_parser("produce", help="publish media events for local files")
    p.add_argument("paths", nargs="+")
    p.add_argument("--mode", choices=["auto", "inline", "uri"], default="auto",
                   help="inline base64, a file:// URI (the worker must allow it), or inline when small (default)")
    p.add_argument("--source", default="dfmod-produce")
    p.add_argument("--content-mode", choices=["structured", "binary"], default="structured",
                   help="CloudEvents content mode: the event as JSON (default), or ce_* headers + the media/data")
    p.set_defaults(func=_produce)

    p = sub.add_parser("verdicts", help="follow the verdict topic")
    p.add_argument("--from-beginning", action="store_true")
    p.add_argument("--timeout", type=float, default=None, help="stop after this many seconds without a verdict")
    p.add_argument("--count", type=int, default=0, help="stop after this many verdicts")
    p.add_argument("--ids", nargs="*", help="only these event ids; stop when all have arrived")
    p.add_argument("--ids-file", help="JSON lines with an 'id' each (the output of `dfmod produce`)")
    p.set_defaults(func=_verdicts)

    p = sub.add_parser("scan", help="score files in-process with ONNX Runtime, no servers")
    p.add_argument("paths", nargs="+")
    p.add_argument("--model-dir", default="triton_models/deepfake_clip",
                   help="a Triton model directory (config.pbtxt + <version>/model.onnx)")
    p.set_defaults(func=_scan)

    sub.add_parser("settings", help="print the effective settings (secrets masked)").set_defaults(func=_settings)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
