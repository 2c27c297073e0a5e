"""The ``streamer`` command: ``run`` a pipeline, ``record`` a source.

Exit codes: 0 success (also after a drained Ctrl-C), 1 runtime failure, 2 bad input,
130 aborted by a second Ctrl-C. Errors are one line on stderr; ``--debug`` adds the
traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from streamer import __version__
from streamer.errors import InputError, StreamerError

if TYPE_CHECKING:
    from streamer.pipeline import Pipeline

EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT, EXIT_ABORTED = 0, 1, 2, 130
LIVE_PREFIXES = ("camera:", "mic:", "mqtt://", "mqtts://")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not args.debug:
        # FFmpeg and OpenCV print their own warnings about bad files; our error says it once.
        os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
        os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
    try:
        code: int = args.handler(args)
    except KeyboardInterrupt:
        code = EXIT_ABORTED
    except StreamerError as exc:
        _report(exc, args.debug)
        code = exc.exit_code
    except Exception as exc:  # an unexpected failure: one line, traceback with --debug
        _report(exc, args.debug)
        code = EXIT_FAILURE
    return code


def _report(exc: BaseException, debug: bool) -> None:
    if debug:
        traceback.print_exception(exc, file=sys.stderr)
    message = str(exc) if isinstance(exc, StreamerError) else f"{type(exc).__name__}: {exc}"
    first_line = message.strip().splitlines()[0] if message.strip() else type(exc).__name__
    print(f"streamer: error: {first_line}", file=sys.stderr)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streamer", description="Run stateful sequence models on live and recorded streams."
    )
    parser.add_argument("--version", action="version", version=f"streamer {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run a pipeline file (or a source with defaults)")
    run.add_argument("pipeline", nargs="?", help="pipeline TOML file")
    run.add_argument("--source", help="source URI, replaces [source] uri")
    run.add_argument("--mode", choices=["realtime", "online", "offline"])
    run.add_argument("--out", help="write outputs as JSON Lines to this file")
    run.add_argument("--duration", type=float, help="stop after S seconds of media time")
    run.add_argument("--max-frames", type=int, help="stop after N input frames")
    run.add_argument("--metrics", help="write the run summary as JSON to this file")
    run.add_argument("--pace", choices=["realtime", "fast"], help="file sources: delivery pace")
    run.add_argument("--speed", type=float, help="real-time factor with --pace realtime")
    run.add_argument("-q", "--quiet", action="store_true", help="no console output lines")
    run.add_argument("--debug", action="store_true", help="show tracebacks")
    run.set_defaults(handler=_run)

    record = commands.add_parser("record", help="record a source into a recording directory")
    record.add_argument("source", help="source URI")
    record.add_argument("out_dir", help="recording directory to create")
    record.add_argument("--duration", type=float, help="seconds of media time to record")
    record.add_argument("--max-frames", type=int, help="frames per stream to record")
    record.add_argument("--rate", type=float, help="audio: resample to Hz; video: fps")
    record.add_argument("--chunk", type=int, default=512, help="audio: samples per frame")
    record.add_argument("--size", help="video: resize to WxH")
    record.add_argument("--mono", action="store_true", help="audio: mix down to one channel")
    record.add_argument("--debug", action="store_true", help="show tracebacks")
    record.set_defaults(handler=_record)
    return parser


# -- run ---------------------------------------------------------------------------------
def _run(args: argparse.Namespace) -> int:
    from streamer.build import Overrides, apply_overrides, build_pipeline
    from streamer.config import load_config, parse_config

    if args.pipeline is None and args.source is None:
        raise InputError("run: give a pipeline file or --source URI (see streamer run --help)")
    for flag, value in (("--duration", args.duration), ("--speed", args.speed)):
        if value is not None and value <= 0:
            raise InputError(f"{flag}: expected a number > 0, got {value}")
    if args.max_frames is not None and args.max_frames < 1:
        raise InputError(f"--max-frames: expected an integer >= 1, got {args.max_frames}")
    metrics_path = Path(args.metrics) if args.metrics else None
    if metrics_path is not None and not metrics_path.parent.is_dir():
        raise InputError(f"{metrics_path}: folder '{metrics_path.parent}' does not exist")
    if args.pipeline is not None:
        config = load_config(args.pipeline)
    else:
        config = parse_config({"source": {"uri": args.source}}, "--source")
    overrides = Overrides(
        source=args.source,
        mode=args.mode,
        out=args.out,
        duration=args.duration,
        max_frames=args.max_frames,
        pace=args.pace,
        speed=args.speed,
        quiet=args.quiet,
    )
    config = apply_overrides(config, overrides)
    summary: dict[str, Any] = {}
    try:
        return asyncio.run(_run_pipeline(build_pipeline(config), summary))
    finally:
        if metrics_path is not None and summary:
            metrics_path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")


async def _run_pipeline(pipeline: Pipeline, summary: dict[str, Any]) -> int:
    """Run with signal handling; fills ``summary`` with the metrics, even on failure."""
    from streamer.metrics import format_summary

    loop = asyncio.get_running_loop()
    signals = 0

    def on_signal(signum: int) -> None:
        nonlocal signals
        signals += 1
        if signals == 1:
            name = signal.Signals(signum).name
            print(f"\nstreamer: {name}: draining (again to abort)", file=sys.stderr)
            pipeline.stop("interrupted")
        else:
            pipeline.abort()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal, signum)
    code = EXIT_OK
    assert pipeline.metrics is not None
    try:
        await pipeline.run()
    except asyncio.CancelledError:
        if not pipeline.aborted:
            raise
        print("streamer: aborted", file=sys.stderr)
        code = EXIT_ABORTED
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        summary.update(pipeline.metrics.summary())
    # After a failure the error line is the only thing on stderr (--metrics still has it).
    print(format_summary(summary), file=sys.stderr)
    return code


# -- record ------------------------------------------------------------------------------
def _record(args: argparse.Namespace) -> int:
    from streamer.clock import Clock, RealClock, VirtualClock
    from streamer.recorder import record
    from streamer.sources import SourceOptions, open_source

    size = _parse_size(args.size) if args.size else None
    live = args.source.startswith(LIVE_PREFIXES)
    # A file is recorded as if captured live, on a virtual clock: captured = start + pts.
    clock: Clock = RealClock() if live else VirtualClock()
    options = SourceOptions(
        rate=args.rate, chunk=args.chunk, size=size, mono=args.mono, pace="realtime"
    )
    source = open_source(args.source, options, clock)

    async def go() -> Any:
        try:
            return await record(
                source,
                Path(args.out_dir),
                duration=args.duration,
                max_frames=args.max_frames,
                clock=clock,
                description=args.source,
            )
        finally:
            await source.aclose()

    summary = asyncio.run(go())
    for stream in summary.streams:
        print(
            f"recorded {summary.frames[stream]} frames ({summary.duration[stream]:.2f} s) "
            f"of stream '{stream}' to {summary.path}"
        )
    return EXIT_OK


def _parse_size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise InputError(f"--size: expected WIDTHxHEIGHT, e.g. 96x96, got {text!r}") from None
    if width < 1 or height < 1:
        raise InputError(f"--size: expected positive sizes, got {text!r}")
    return width, height


if __name__ == "__main__":
    sys.exit(main())
