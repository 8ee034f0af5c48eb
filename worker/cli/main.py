"""`dfmod`: the worker and the tools around it.

    dfmod worker                 run a streaming worker (settings from DFMOD_* variables)
    dfmod produce PATH...        publish media events for local files
    dfmod verdicts               follow the verdict topic, one JSON line per verdict
    dfmod scan PATH...           score files or folders in-process with ONNX Runtime, no servers
    dfmod settings               print the effective settings as JSON (secrets masked)
    dfmod hashlist import|export|stats   operators' PDQ lists of known fakes and reals (CSV)

Exit codes: 0 success; 1 `scan` flagged something fake (`verdicts`: not every id arrived); 2 usage or
configuration error; 3 a server or model cannot be reached or loaded; 10-15 `worker` start-up checks
(docs/deploy.md); 70 an internal error (a bug: rerun with --debug and report it); 130 interrupted.
Errors are one line on stderr; --debug shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import textwrap
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from worker.core.version import __version__

if TYPE_CHECKING:
    from worker.core.contracts import Verdict
    from worker.core.settings import WorkerSettings

log = logging.getLogger("worker.cli.main")

USAGE = 2
INFRASTRUCTURE = 3
INTERNAL = 70
INTERRUPTED = 130


class CliError(Exception):
    """A failure with the exit code it maps to; the message is the one line a person reads."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def _settings() -> WorkerSettings:
    from worker.cli.startup import load_settings  # deferred: keeps `dfmod --help` fast

    return load_settings()


# -- commands ---------------------------------------------------------------------------------------------------
def _worker(args: argparse.Namespace) -> int:
    from worker.cli.startup import Failure, StartupError, run_checks
    from worker.infer.triton import TritonBackend
    from worker.obs import logs, metrics
    from worker.obs.health import HealthState, serve
    from worker.stream.loop import Worker

    settings = _settings()
    logs.configure(settings.log_level)
    metrics.IN_FLIGHT_LIMIT.set(settings.max_in_flight)
    health = HealthState(settings.liveness_stall_s)
    checked = threading.Event()
    health.ready_checks["startup_checks"] = checked.is_set  # /readyz stays 503 until every check has passed
    try:
        server = serve(health, settings.http_host, settings.http_port)
    except OSError as exc:
        raise StartupError(Failure.SETTINGS, f"cannot listen on {settings.http_host}:{settings.http_port}: "
                           f"{exc.strerror or exc} (DFMOD_HTTP_PORT)") from exc
    log.info("operations server up", extra={"address": f"{settings.http_host}:{settings.http_port}",
                                            "paths": ["/healthz", "/readyz", "/metrics"]})
    try:
        backend = TritonBackend(settings.triton)
        model = run_checks(settings, backend, beat=health.beat)
        metrics.set_model_info(model)
        if model.weights == "random-init":
            log.warning("the served model has random-init weights: its scores and labels mean nothing",
                        extra={"model": f"{model.name}/{model.version}"})
        worker = Worker(settings, backend, health=health, server=server)
    except BaseException:
        server.shutdown()
        raise
    checked.set()
    worker.install_signal_handlers()
    worker.run()
    return 0


def _produce(args: argparse.Namespace) -> int:
    from worker.cli.produce import event_for_file, produce_events

    settings = _settings()
    paths = [Path(p) for p in args.paths]
    for path in paths:
        if not path.is_file():
            raise CliError(f"no such file: {path}", USAGE)
    events = [event_for_file(p, args.mode, settings.fetch.max_inline_bytes, args.source) for p in paths]
    produce_events(settings.kafka, events, timeout_s=args.timeout, content_mode=args.content_mode)
    for path, event in zip(args.paths, events, strict=True):
        print(json.dumps({"id": event.id, "path": str(path)}), flush=True)
    return 0


def _verdicts(args: argparse.Namespace) -> int:
    from worker.cli.verdicts import follow

    settings = _settings()
    wanted = set(args.ids or [])
    if args.ids_file:
        try:
            lines = Path(args.ids_file).read_text().splitlines()
            wanted |= {json.loads(line)["id"] for line in lines if line.strip()}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CliError(f"cannot read ids from {args.ids_file}: {exc}", USAGE) from exc
    seen = 0
    for verdict in follow(settings.kafka, from_beginning=args.from_beginning, timeout_s=args.timeout):
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
    from worker.cli.scan import UsageError, collect_paths, exit_code, random_init_warning, scan, table_header, table_row
    from worker.cli.startup import StartupError, check_detector

    settings = _settings()
    try:
        files = collect_paths([Path(p) for p in args.paths])
    except UsageError as exc:
        raise CliError(str(exc), USAGE) from exc
    model_dir = Path(args.model_dir)
    if not (model_dir / "config.pbtxt").is_file():
        raise CliError(f"no model at {model_dir} (no config.pbtxt): export one with `dfmod-train export --out "
                       f"{model_dir.parent}` or pass --model-dir", INFRASTRUCTURE)
    try:
        check_detector(settings.faces)
    except StartupError as exc:
        raise CliError(str(exc), INFRASTRUCTURE) from exc

    verdicts: list[Verdict] = []
    for verdict in scan(files, model_dir, settings):
        if not verdicts:
            warning = random_init_warning(verdict.data.model) if verdict.data.model else None
            if warning:
                print(warning, file=sys.stderr, flush=True)
            if not args.json:
                print(table_header(), flush=True)
        ms = sum(verdict.data.timings_ms.values())  # the file's own stages (files overlap in the pipeline)
        shown = str(files[len(verdicts)])
        verdicts.append(verdict)
        print(verdict.model_dump_json() if args.json else table_row(verdict, shown, ms), flush=True)
    return int(exit_code(verdicts))


def _show_settings(args: argparse.Namespace) -> int:
    print(_settings().model_dump_json(indent=2))
    return 0


# -- parser -----------------------------------------------------------------------------------------------------
class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows every option's default, keeps the descriptions' line breaks."""


def _hashlist(args: argparse.Namespace) -> int:
    from worker.cli import hashlist

    settings = _settings()
    try:
        if args.action == "import":
            if not args.file:
                raise CliError("hashlist import needs the CSV file", USAGE)
            try:
                text = Path(args.file).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise CliError(f"cannot read {args.file}: {exc}", USAGE) from exc
            stored = hashlist.import_csv(settings, text, args.list)
            print(json.dumps({"imported": stored, "file": args.file}), flush=True)
        elif args.action == "export":
            if args.labelled_fake:
                print(hashlist.export_labelled_fake(settings, args.list or "dfmod-labelled-fake"), end="")
            else:
                print(hashlist.export_lists(settings, args.list), end="")
        else:
            for row in hashlist.stats(settings):
                print(json.dumps(row), flush=True)
    except hashlist.HashListError as exc:
        raise CliError(str(exc), USAGE if exc.usage else INFRASTRUCTURE) from exc
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dfmod", description=__doc__, formatter_class=_HelpFormatter)
    parser.add_argument("--version", action="version", version=f"dfmod {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    # Also accepted after the command (`dfmod scan --debug ...`); SUPPRESS keeps the top-level value otherwise.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show tracebacks and debug logs (default: off)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str, description: str) -> argparse.ArgumentParser:
        description = "\n".join(textwrap.fill(paragraph, 100) for paragraph in description.split("\n"))
        return sub.add_parser(name, help=help, description=description, parents=[common],
                              formatter_class=_HelpFormatter)

    command("worker", "run a streaming worker",
            "Run a streaming worker. Settings come from DFMOD_* variables (`dfmod settings`). Start-up checks "
            "the detector, Triton and Kafka first; exit codes 10-15 name the failed check (docs/deploy.md)."
            ).set_defaults(func=_worker)

    p = command("produce", "publish media events for local files",
                "Publish one media.submitted event per file to the events topic; prints {id, path} per file.")
    p.add_argument("paths", nargs="+", metavar="PATH", help="media files")
    p.add_argument("--mode", choices=["auto", "inline", "uri"], default="auto",
                   help="inline base64, a file:// URI (the worker must allow it), or inline when small")
    p.add_argument("--source", default="dfmod-produce", help="the events' CloudEvents source")
    p.add_argument("--timeout", type=float, default=30.0,
                   help="seconds to wait for the broker to answer and to acknowledge every event")
    p.add_argument("--content-mode", choices=["structured", "binary"], default="structured",
                   help="CloudEvents content mode: the event as JSON, or ce_* headers + the media/data")
    p.set_defaults(func=_produce)

    p = command("verdicts", "follow the verdict topic",
                "Follow the verdict topic without a consumer group (never steals a worker's offsets).")
    p.add_argument("--from-beginning", action="store_true", help="start at the oldest retained verdict")
    p.add_argument("--timeout", type=float, default=None,
                   help="stop after this many seconds without a verdict (also bounds connecting); none: never")
    p.add_argument("--count", type=int, default=0, help="stop after this many verdicts (0: no limit)")
    p.add_argument("--ids", nargs="*", metavar="ID", help="only these event ids; stop when all have arrived")
    p.add_argument("--ids-file", metavar="FILE", help="JSON lines with an 'id' each (the output of `dfmod produce`)")
    p.set_defaults(func=_verdicts)

    p = command("scan", "score files or folders in-process with ONNX Runtime, no servers",
                "Score media files (folders are walked) with the worker's pipeline and ONNX Runtime. Prints a "
                "table (file, status, label, score, faces, ms) or, with --json, one verdict per line.\n"
                "Exit codes: 0 nothing flagged fake, 1 something labelled fake, 2 a path is missing or "
                "unreadable or a file unusable (rejected), 3 the model or detector cannot be loaded or a file "
                "failed on our side (error).")
    p.add_argument("paths", nargs="+", metavar="PATH", help="media files or folders")
    p.add_argument("--model-dir", default="triton_models/deepfake_clip",
                   help="a Triton model directory (config.pbtxt + <version>/model.onnx)")
    p.add_argument("--json", action="store_true", help="print each full verdict as one JSON line")
    p.set_defaults(func=_scan)

    p = command("hashlist", "import, export or count operators' PDQ hash lists",
                "Hash lists of known fakes and reals, matched against every media (DFMOD_NEAR_DUPLICATE__LISTS: "
                "annotate or decide). CSV with the header pdq,label,list,source; pdq is 64 hex digits, or "
                "several separated by spaces for a video's frames.")
    p.add_argument("action", choices=["import", "export", "stats"],
                   help="import a CSV, export entries as CSV, or count entries per list and label")
    p.add_argument("file", nargs="?", help="import: the CSV file")
    p.add_argument("--list", help="import: store under this list name; export: only this list (or the name "
                   "given to --labelled-fake entries)")
    p.add_argument("--labelled-fake", action="store_true",
                   help="export: the hashes of every cached verdict dfmod labelled fake, for sharing")
    p.set_defaults(func=_hashlist)

    command("settings", "print the effective settings (secrets masked)",
            "Print the effective settings as JSON, secrets masked.").set_defaults(func=_show_settings)
    return parser


def _quiet_libraries(debug: bool) -> None:
    """Tools print their own one-line errors; kafka-python's retry chatter would bury them."""
    from worker.obs import logs

    if debug:
        logs.configure("DEBUG")
    else:
        logs.configure("WARNING")
        logging.getLogger("kafka").setLevel(logging.CRITICAL)


def exit_code_for(exc: BaseException, command: str) -> tuple[int, str]:
    """The exit code and the one line for an exception that ended a command."""
    from kafka.errors import KafkaError

    from worker.cli.startup import Failure, StartupError
    from worker.infer.base import InferenceError
    from worker.stream.kafka_config import KafkaUnavailable

    if isinstance(exc, CliError):
        return exc.code, str(exc)
    if isinstance(exc, StartupError):
        if command == "worker":
            return exc.exit_code, str(exc)
        return (USAGE if exc.failure is Failure.SETTINGS else INFRASTRUCTURE), str(exc)
    if isinstance(exc, KafkaUnavailable | InferenceError):
        return INFRASTRUCTURE, str(exc)
    if isinstance(exc, KafkaError):
        return INFRASTRUCTURE, f"Kafka: {exc}"
    return INTERNAL, f"internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)"


def main(argv: list[str] | None = None) -> int:
    # OpenCV's native logger writes unstructured lines to stderr (YuNet: "setPreferableTarget Targets are not
    # supported..."); errors still come through. Before anything imports cv2.
    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
    # gRPC's C core logs each failed TLS handshake as an unstructured stderr line; the start-up error and the
    # breaker already say it once, in one line.
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    args = build_parser().parse_args(argv)
    debug = bool(getattr(args, "debug", False))
    if args.command != "worker":
        _quiet_libraries(debug)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return INTERRUPTED
    except Exception as exc:
        if debug:
            raise
        code, line = exit_code_for(exc, args.command)
        print(f"dfmod {args.command}: error: {line}", file=sys.stderr, flush=True)
        return code


if __name__ == "__main__":
    sys.exit(main())
