"""The ``streamer`` command: ``run`` a pipeline, ``record`` a source, ``publish`` it to MQTT.

Exit codes: 0 success (also after a drained Ctrl-C), 1 runtime failure, 2 bad input,
130 aborted by a second Ctrl-C. Errors are one line on stderr; ``--debug`` adds the
traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import threading
import traceback
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from streamer import __version__
from streamer.errors import InputError, StreamerError

if TYPE_CHECKING:
    from streamer.config import SourceConfig
    from streamer.pipeline import Pipeline

EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT, EXIT_ABORTED = 0, 1, 2, 130


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; ``argv`` None means this process's own command line, which an
    abort (second Ctrl-C) then ends at once (``os._exit``) instead of returning."""
    global _own_process
    _own_process = argv is None
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
    if code == EXIT_ABORTED:
        _exit_now()  # returns only when called in-process, with the signals restored
    return code


# -- signals -----------------------------------------------------------------------------
#: Whether ``main`` runs as this process's command (then an abort may end the process).
_own_process = False


class _Interrupts:
    """SIGINT and SIGTERM while a command's event loop runs: the first calls ``stop`` and
    says so (``doing``: what the stop does), the second calls ``abort``; later ones are
    ignored, until ``main`` ends: the abort waits for no model call or queue, only for a
    line being written and a source's release of its file, and then the process ends."""

    def __init__(self, doing: str, stop: Callable[[], object], abort: Callable[[], object]) -> None:
        self.doing = doing
        self.stop = stop
        self.abort = abort
        self.count = 0
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def aborted(self) -> bool:
        return self.count >= 2

    def __enter__(self) -> _Interrupts:
        self._loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._loop.add_signal_handler(signum, self._on_signal, signum)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._loop.remove_signal_handler(signum)
            if self.aborted:  # the rest of the way out is short: nothing may interrupt it
                signal.signal(signum, signal.SIG_IGN)

    def _on_signal(self, signum: int) -> None:
        self.count += 1
        if self.count == 1:
            name = signal.Signals(signum).name
            print(f"\nstreamer: {name}: {self.doing} (again to abort)", file=sys.stderr)
            self.stop()
        elif self.count == 2:
            self.abort()


def _exit_now() -> None:
    """End the process with exit code 130, skipping the interpreter's shutdown (which can
    wait for threads still busy, and print a traceback on one more Ctrl-C). Sinks
    and files are closed by then; stdout and stderr are flushed here. In-process (tests),
    it only restores the signals' default handlers."""
    if not _own_process:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
        return
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(EXIT_ABORTED)


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
    run.add_argument(
        "pipeline", nargs="?", help="pipeline TOML file, or a ready pipeline's name (see pipelines)"
    )
    run.add_argument(
        "--source",
        action="append",
        metavar="URI",
        help="source URI, replaces [source] uri; repeat it for several sources",
    )
    run.add_argument(
        "--sources", metavar="FILE", help="a file of source URIs, one per line (# comment lines)"
    )
    run.add_argument("--mode", choices=["realtime", "online", "offline"])
    run.add_argument("--out", help="write outputs as JSON Lines to this file")
    run.add_argument(
        "--video-out",
        metavar="FILE",
        help="write the video with each frame's label, scores and latency drawn on"
        " (.mp4: mp4v, .avi: MJPG, .webm: VP8)",
    )
    run.add_argument(
        "--preview",
        action="store_true",
        help="show the annotated video in a window (needs a display)",
    )
    run.add_argument(
        "--mqtt",
        action="append",
        metavar="URL",
        help="publish outputs as JSON to an MQTT broker: mqtt[s]://HOST[:PORT][/TOPIC]"
        "[?qos=1&retain=true&ca=...&password_env=VAR]; the topic may name {stream},"
        " {kind}, {label} (default streamer/{stream}/{kind}); repeat it for several",
    )
    run.add_argument(
        "--serve",
        metavar="[HOST:]PORT",
        help="show the run live in a browser: a page served on PORT (127.0.0.1 unless a"
        " HOST is given; any other address needs a token, printed with the URL)",
    )
    run.add_argument(
        "--ray",
        nargs="?",
        const="",
        metavar="ADDRESS",
        help="run the model on a pool of Ray actors ([run] workers, default 2): on the"
        " cluster at ADDRESS (ray://HOST:10001 or HOST:6379, or 'auto'), or on a local Ray"
        " without one (pip install 'streamer[ray]')",
    )
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
    _add_source_flags(record, "record")
    record.add_argument(
        "--pace",
        choices=["realtime", "fast"],
        help="realtime: capture on the wall clock, as a live source is; fast (default for "
        "files and synthetic sources): as fast as read, stamped as if captured live",
    )
    record.add_argument(
        "--clean",
        action="store_true",
        help="first delete unfinished recordings of OUT_DIR (.OUT_DIR.partial-*) that a "
        "killed recorder left",
    )
    record.add_argument("--debug", action="store_true", help="show tracebacks")
    record.set_defaults(handler=_record)

    _add_publish_parser(commands)

    devices = commands.add_parser("devices", help="list microphones and cameras")
    devices.add_argument("--json", action="store_true", help="print the listing as JSON")
    devices.add_argument("--debug", action="store_true", help="show tracebacks")
    devices.set_defaults(handler=_devices)

    _add_pipelines_parser(commands)
    _add_plot_parser(commands)
    _add_serve_parser(commands)
    return parser


def _devices(args: argparse.Namespace) -> int:
    from streamer.devices import format_devices, list_devices

    found = list_devices()
    print(json.dumps(found, indent=2) if args.json else format_devices(found))
    return EXIT_OK


# -- pipelines (ready pipelines shipped in the `pipelines` package) ----------------------
def _add_pipelines_parser(commands: Any) -> None:
    ready = commands.add_parser("pipelines", help="list the ready pipelines (streamer run NAME)")
    ready.add_argument("--json", action="store_true", help="print the listing as JSON")
    ready.add_argument("--debug", action="store_true", help="show tracebacks")
    ready.set_defaults(handler=_pipelines)


def _pipelines(args: argparse.Namespace) -> int:
    from streamer.ready import format_ready, ready_pipelines

    found = ready_pipelines()
    if args.json:
        print(json.dumps([pipeline.as_json() for pipeline in found], indent=2))
    else:
        print(format_ready(found))
    return EXIT_OK


async def _until_done_or_aborted(
    draining: str, source: Any, work: Callable[[asyncio.Event], Awaitable[Any]]
) -> Any:
    """``await work(stop)`` under Ctrl-C handling: the first sets ``stop`` (``draining``
    says what the command then finishes), the second aborts it (None is returned). The
    source is closed either way."""
    main_task = asyncio.current_task()
    assert main_task is not None
    stop = asyncio.Event()
    interrupts = _Interrupts(draining, stop.set, main_task.cancel)
    try:
        with interrupts:
            return await work(stop)
    except asyncio.CancelledError:
        if not interrupts.aborted:
            raise
        return None
    finally:
        await source.aclose()


# -- run ---------------------------------------------------------------------------------
def _run(args: argparse.Namespace) -> int:
    from streamer.build import (
        Overrides,
        apply_overrides,
        input_paths,
        output_paths,
        sink_names,
    )
    from streamer.config import load_config, parse_config
    from streamer.ready import resolve_pipeline
    from streamer.safety import check_outputs, check_writable

    if args.preview:
        from streamer.sinks.video import check_display

        check_display("--preview")
    if args.video_out is not None:
        from streamer.sinks.video import check_video_path

        check_video_path(Path(args.video_out), "--video-out")
    if args.serve is not None:  # a bad address is refused before the model loads
        from streamer.web.bind import parse_bind

        parse_bind(args.serve, "--serve")
    uris = [*(args.source or []), *(_read_sources(args.sources) if args.sources else [])]
    if args.pipeline is None and not uris:
        raise InputError("run: give a pipeline file or --source URI (see streamer run --help)")
    if args.pipeline is not None:
        args.pipeline = resolve_pipeline(args.pipeline)  # a file, or a ready pipeline's name
        config = load_config(args.pipeline)
    else:
        config = parse_config({"source": {"uri": uris[0]}}, "--source")
    overrides = Overrides(
        sources=tuple(uris),
        mode=args.mode,
        out=args.out,
        duration=args.duration,
        max_frames=args.max_frames,
        pace=args.pace,
        speed=args.speed,
        quiet=args.quiet,
        video_out=args.video_out,
        preview=args.preview,
        mqtt=tuple(args.mqtt or ()),
        serve=args.serve,
        ray=args.ray,
        origin=args.pipeline or "--source",
    )
    config = apply_overrides(config, overrides)
    metrics_path = Path(args.metrics) if args.metrics else None
    outputs = output_paths(config, overrides)
    if metrics_path is not None:
        check_writable(metrics_path, "--metrics")
        outputs.append(("--metrics", metrics_path))
    check_outputs(input_paths(config, args.pipeline), outputs)
    summary: dict[str, Any] = {}
    try:
        pipeline = _build(config, args.pipeline, sink_names(config, overrides))
        return asyncio.run(_run_pipeline(pipeline, summary))
    finally:
        if metrics_path is not None and summary:
            metrics_path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")


def _read_sources(path: str) -> list[str]:
    """``--sources FILE``: one URI per line; blank lines and ``#`` comment lines are skipped."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise InputError(f"--sources: {path}: cannot read the list of sources ({reason})") from None
    uris = [line.strip() for line in text.splitlines()]
    uris = [uri for uri in uris if uri and not uri.startswith("#")]
    if not uris:
        raise InputError(f"--sources: {path}: lists no source URI")
    return uris


def _build(config: Any, pipeline_file: str | None, names: list[str] | None = None) -> Pipeline:
    """Build the pipeline; an error about a key also names the pipeline file it is in."""
    from streamer.build import build_pipeline

    try:
        return build_pipeline(config, names=names)
    except InputError as exc:
        message = str(exc)
        if pipeline_file is not None and message.startswith(("[", "stage '")):
            raise InputError(f"{pipeline_file}: {message}") from exc
        raise


async def _run_pipeline(pipeline: Pipeline, summary: dict[str, Any]) -> int:
    """Run with signal handling; fills ``summary`` with the metrics, even on failure."""
    from streamer.metrics import format_summary

    code = EXIT_OK
    assert pipeline.metrics is not None
    try:
        with (
            _Interrupts("draining", lambda: pipeline.stop("interrupted"), pipeline.abort),
            _scaling_signals(pipeline),
        ):
            await pipeline.run()
    except asyncio.CancelledError:
        if not pipeline.aborted:
            raise
        print("streamer: aborted", file=sys.stderr)
        code = EXIT_ABORTED
    finally:
        summary.update(pipeline.metrics.summary())
    # After a failure the error line is the only thing on stderr (--metrics still has it).
    print(format_summary(summary), file=sys.stderr)
    return code


@contextlib.contextmanager
def _scaling_signals(pipeline: Pipeline) -> Iterator[None]:
    """With the Ray engine: SIGUSR1 adds a model actor, SIGUSR2 removes one."""
    engine = next((e for s in pipeline.stages if (e := getattr(s, "engine", None))), None)
    if engine is None or threading.current_thread() is not threading.main_thread():
        yield
        return
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, engine.scale_by, 1)
    loop.add_signal_handler(signal.SIGUSR2, engine.scale_by, -1)
    try:
        yield
    finally:
        loop.remove_signal_handler(signal.SIGUSR1)
        loop.remove_signal_handler(signal.SIGUSR2)


def _add_source_flags(parser: argparse.ArgumentParser, verb: str) -> None:
    """The flags of a command that reads one source (``record``, ``publish``)."""
    parser.add_argument("--duration", type=float, help=f"seconds of media time to {verb}")
    parser.add_argument("--max-frames", type=int, help=f"frames per stream to {verb}")
    parser.add_argument("--rate", type=float, help="audio: resample to Hz; video: fps")
    parser.add_argument("--chunk", type=int, default=512, help="audio: samples per frame")
    parser.add_argument("--size", help="video: resize to WxH")
    parser.add_argument("--mono", action="store_true", help="audio: mix down to one channel")


def _checked_source_flags(args: argparse.Namespace) -> SourceConfig:
    """``SOURCE``, ``--rate``, ``--chunk`` and ``--size`` checked as ``[source]`` keys are
    (errors name the flag)."""
    from streamer.config import source_from_flags

    size = _parse_size(args.size) if args.size else None
    return source_from_flags(
        {"uri": args.source, "rate": args.rate, "chunk": args.chunk, "size": size},
        {"uri": "SOURCE", "rate": "--rate", "chunk": "--chunk", "size": "--size"},
    )


# -- record ------------------------------------------------------------------------------
def _record(args: argparse.Namespace) -> int:
    """Record a source. The first SIGINT or SIGTERM stops and keeps what was recorded (a
    valid recording, streams ended with reason ``stopped``); a second aborts and removes
    the temporary folder (exit 130)."""
    from streamer.clock import Clock, RealClock, VirtualClock
    from streamer.recording import record
    from streamer.sources import SourceOptions, open_source

    out_dir = Path(args.out_dir)
    _check_partials(out_dir, args.clean)
    checked = _checked_source_flags(args)
    options = SourceOptions(
        rate=checked.rate, chunk=checked.chunk, size=checked.size, mono=args.mono, pace="realtime"
    )
    # A replay is recorded as if captured live, on a virtual clock (captured = start +
    # pts) unless --pace realtime; a device (its streams say live) on the real clock.
    realtime = args.pace == "realtime"
    clock: Clock = RealClock() if realtime else VirtualClock()
    source = open_source(args.source, options, clock)
    if not realtime and any(info.live for info in source.streams):
        asyncio.run(source.aclose())  # nothing was started: opened again on the real clock
        realtime = True
        clock = RealClock()
        source = open_source(args.source, options, clock)
    endless = any(info.total_frames is None for info in source.streams)
    if endless and not realtime and args.duration is None and args.max_frames is None:
        raise InputError(
            f"record: {args.source} never ends: give --duration or --max-frames, or "
            f"--pace realtime and stop it with Ctrl-C"
        )

    async def go() -> Any:
        return await _until_done_or_aborted(
            "finishing the recording",
            source,
            lambda stop: record(
                source,
                out_dir,
                duration=args.duration,
                max_frames=args.max_frames,
                clock=clock,
                description=args.source,
                stop=stop,
            ),
        )

    summary = asyncio.run(go())
    if summary is None:
        if out_dir.exists():  # aborted while the finished recording was put in place
            print(f"streamer: aborted; the recording {out_dir} was complete", file=sys.stderr)
        else:
            print(f"streamer: aborted; nothing was written to {out_dir}", file=sys.stderr)
        return EXIT_ABORTED
    for stream in summary.streams:
        print(
            f"recorded {summary.frames[stream]} frames ({summary.duration[stream]:.2f} s) "
            f"of stream '{stream}' to {summary.path}"
        )
    return EXIT_OK


def _check_partials(out_dir: Path, clean: bool) -> None:
    """Refuse to record beside unfinished recordings of ``out_dir`` (or, with ``clean``,
    delete those whose recorder is gone); never beside one still being recorded."""
    from streamer.recording import partial_folders, remove_partial_folders

    partials = partial_folders(out_dir)
    running = [p for p in partials if p.running]
    if running:
        raise InputError(
            f"{out_dir}: process {running[0].pid} is already recording it (into {running[0].path})"
        )
    if not partials:
        return
    if clean:
        for path in remove_partial_folders(out_dir):
            print(f"streamer: removed unfinished recording {path}", file=sys.stderr)
        return
    names = ", ".join(str(p.path) for p in partials)
    raise InputError(
        f"{out_dir}: unfinished recordings left by a killed `streamer record` are beside it "
        f"({names}): delete them, or add --clean to delete them and record"
    )


def _parse_size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise InputError(f"--size: expected WIDTHxHEIGHT, e.g. 96x96, got {text!r}") from None
    if width < 1 or height < 1:
        raise InputError(f"--size: expected positive sizes, got {text!r}")
    return width, height


# -- publish (a source's frames to an MQTT broker) ----------------------------------------
def _add_publish_parser(commands: Any) -> None:
    publish = commands.add_parser(
        "publish", help="send a source's frames to an MQTT broker (for an mqtt:// source)"
    )
    publish.add_argument("source", help="source URI (file, recording:, camera:, mic:, ...)")
    publish.add_argument(
        "url",
        help="mqtt[s]://HOST[:PORT][/TOPIC][?qos=1&ca=...&password_env=VAR]; the topic may"
        " name {stream} (default streamer/frames/{stream})",
    )
    _add_source_flags(publish, "publish")
    publish.add_argument(
        "--pace",
        choices=["realtime", "fast"],
        default="realtime",
        help="realtime (default): a file is published at its own pace, as a device would"
        " send it; fast: as fast as the broker takes it",
    )
    publish.add_argument("--debug", action="store_true", help="show tracebacks")
    publish.set_defaults(handler=_publish)


def _publish(args: argparse.Namespace) -> int:
    """``streamer publish``: the first SIGINT or SIGTERM ends the open streams (their end
    messages are sent) and stops; a second aborts (exit 130)."""
    from streamer.clock import RealClock
    from streamer.mqtt.publish import publish, publish_target
    from streamer.sources import SourceOptions, open_source

    if args.duration is not None and not args.duration > 0:
        raise InputError(f"--duration: must be > 0 seconds, got {args.duration}")
    if args.max_frames is not None and args.max_frames < 1:
        raise InputError(f"--max-frames: must be >= 1, got {args.max_frames}")
    broker, qos = publish_target(args.url)
    checked = _checked_source_flags(args)
    options = SourceOptions(
        rate=checked.rate,
        chunk=checked.chunk,
        size=checked.size,
        mono=args.mono,
        pace=args.pace,
        overflow="drop-oldest",
    )

    async def go() -> Any:
        source = open_source(args.source, options, RealClock())
        return await _until_done_or_aborted(
            "ending the streams",
            source,
            lambda stop: publish(
                source,
                broker,
                qos=qos,
                duration=args.duration,
                max_frames=args.max_frames,
                stop=stop,
            ),
        )

    summary = asyncio.run(go())
    if summary is None:
        print("streamer: aborted", file=sys.stderr)
        return EXIT_ABORTED
    print(summary.line(broker, qos))
    return EXIT_OK


# -- plot (a JSONL output file as a timeline figure) ---------------------------------------
def _add_plot_parser(commands: Any) -> None:
    plot = commands.add_parser("plot", help="draw a JSONL output file as a timeline image")
    plot.add_argument("jsonl", help="JSONL output file of streamer run")
    plot.add_argument("-o", "--out", required=True, help="image to write (.png, .svg, .pdf)")
    plot.add_argument(
        "--source", metavar="AUDIO", help="the audio file or recording the run read: its waveform"
    )
    plot.add_argument("--streams", metavar="A,B", help="plot only these streams, in this order")
    plot.add_argument("--width", type=float, default=12.0, help="inches (default 12)")
    plot.add_argument("--height", type=float, help="inches (default: from the panel count)")
    plot.add_argument("--dpi", type=float, default=100.0, help="pixels per inch (default 100)")
    plot.add_argument("--debug", action="store_true", help="show tracebacks")
    plot.set_defaults(handler=_plot)


def _plot(args: argparse.Namespace) -> int:
    """``streamer plot``: matplotlib is imported here, never by ``streamer run``."""
    from streamer.plot import check_out_suffix, plot_timeline, save_timeline
    from streamer.safety import check_outputs, check_writable, source_inputs

    out = Path(args.out)
    check_writable(out, "-o")
    check_out_suffix(out)
    inputs = [("the JSONL file", Path(args.jsonl))]
    inputs += source_inputs(args.source) if args.source else []
    check_outputs(inputs, [("-o", out)])
    streams = [s.strip() for s in args.streams.split(",") if s.strip()] if args.streams else None
    figure = plot_timeline(
        args.jsonl,
        source=args.source,
        streams=streams,
        width=args.width,
        height=args.height,
        dpi=args.dpi,
    )
    save_timeline(figure, out)
    print(f"wrote {out}")
    return EXIT_OK


# -- serve (a finished run's JSONL in the live view's page) --------------------------------
def _add_serve_parser(commands: Any) -> None:
    serve = commands.add_parser(
        "serve", help="review a finished run in a browser: its JSONL file (and video)"
    )
    serve.add_argument("jsonl", help="JSONL output file of streamer run")
    serve.add_argument("--video", metavar="FILE", help="the video the run read (frames shown)")
    serve.add_argument("--stream", help="the stream the video is (default: the file's first)")
    serve.add_argument(
        "--bind", default="127.0.0.1:8080", metavar="[HOST:]PORT", help="default 127.0.0.1:8080"
    )
    serve.add_argument(
        "--token-env", metavar="VAR", help="the token from this environment variable"
    )
    serve.add_argument("--history", type=float, default=30.0, help="seconds on the chart")
    serve.add_argument("--debug", action="store_true", help="show tracebacks")
    serve.set_defaults(handler=_serve)


def _serve(args: argparse.Namespace) -> int:
    """``streamer serve``: until SIGINT or SIGTERM."""
    from streamer.web.review import review_server

    server = review_server(
        args.jsonl,
        video=args.video,
        stream=args.stream,
        bind=args.bind,
        token_env=args.token_env,
        history_s=args.history,
    )

    async def go() -> None:
        stop = asyncio.Event()
        main_task = asyncio.current_task()
        assert main_task is not None
        await server.start()
        server.announce("review")
        try:
            with _Interrupts("stopping", stop.set, main_task.cancel):
                await stop.wait()
        finally:
            await server.stop()

    with contextlib.suppress(asyncio.CancelledError):
        asyncio.run(go())
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
