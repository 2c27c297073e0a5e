"""``streamer record`` under signals, and the unfinished recordings a killed one leaves.

The first SIGINT or SIGTERM finishes the recording and keeps it (streams end with reason
``stopped``, exit 0); a second aborts (exit 130). Neither leaves the hidden
``.NAME.partial-*`` folder behind. A SIGKILLed recorder does: the next ``streamer record``
to that target names it and refuses, ``--clean`` removes it, and ``streamer run`` on the
missing target says what the folder beside it is. Real processes where signals are the
point; the rest in-process.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from media import REPO_ROOT, cli_env, streamer_command, wait_for

from streamer.cli import main
from streamer.clock import VirtualClock
from streamer.frames import StreamEnd
from streamer.recording import partial_folders, read_recording, record
from streamer.sources import SourceOptions, open_source

#: Seconds to wait for the recorder to start writing (process start-up included).
START_LIMIT = 30.0
#: Seconds a signalled recorder may take to exit.
EXIT_LIMIT = 10.0


@pytest.fixture
def recorder(tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``streamer record synthetic:tone TMP/rec --pace realtime``, writing by the time it
    is handed over (killed at teardown if alive); stdout and stderr go to TMP/*.txt."""
    with (
        (tmp_path / "stdout.txt").open("wb") as out,
        (tmp_path / "stderr.txt").open("wb") as err,
    ):
        proc = subprocess.Popen(
            [
                *streamer_command(),
                "record",
                "synthetic:tone",
                str(tmp_path / "rec"),
                "--pace",
                "realtime",
            ],
            cwd=REPO_ROOT,
            env=cli_env(),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
        )

    def writing() -> bool:
        assert proc.poll() is None, (tmp_path / "stderr.txt").read_text()
        return any((p.path / "s0.data").is_file() for p in partial_folders(tmp_path / "rec"))

    try:
        wait_for(writing, START_LIMIT, "the recording to start")
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=EXIT_LIMIT)


def finish(proc: subprocess.Popen[bytes], tmp_path: Path) -> tuple[int, str, str]:
    """Wait for the exit: code, stdout, stderr."""
    try:
        code = proc.wait(timeout=EXIT_LIMIT)
    except subprocess.TimeoutExpired:
        raise AssertionError("streamer record did not exit after the signal") from None
    return (
        code,
        (tmp_path / "stdout.txt").read_text(encoding="utf-8"),
        (tmp_path / "stderr.txt").read_text(encoding="utf-8"),
    )


def test_sigterm_finishes_and_keeps_the_recording(
    recorder: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    recorder.send_signal(signal.SIGTERM)
    code, stdout, stderr = finish(recorder, tmp_path)
    assert code == 0, stderr
    assert "SIGTERM: finishing the recording" in stderr
    assert "Traceback" not in stderr
    assert partial_folders(tmp_path / "rec") == []
    rec = read_recording(tmp_path / "rec")
    (stream,) = rec.streams
    assert stream.frames > 0
    assert stream.end == StreamEnd("tone", stream.frames, "stopped")
    assert list(stream.times["index"]) == list(range(stream.frames))
    assert f"recorded {stream.frames} frames" in stdout


def test_second_signal_aborts_and_leaves_no_partial(
    recorder: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    recorder.send_signal(signal.SIGTERM)
    recorder.send_signal(signal.SIGINT)
    code, _, stderr = finish(recorder, tmp_path)
    assert code == 130, stderr
    assert "aborted" in stderr and "Traceback" not in stderr
    assert partial_folders(tmp_path / "rec") == []
    # The abort discards the recording, unless it came while the finished one was being
    # put in place: then what is there is complete.
    if (tmp_path / "rec").exists():
        assert "was complete" in stderr
        read_recording(tmp_path / "rec")
    else:
        assert "nothing was written" in stderr


def test_killed_recorder_partial_is_named_then_cleaned(
    recorder: subprocess.Popen[bytes], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recorder.send_signal(signal.SIGKILL)
    recorder.wait(timeout=EXIT_LIMIT)
    target = tmp_path / "rec"
    (partial,) = partial_folders(target)
    assert not partial.running
    capsys.readouterr()

    assert main(["record", "synthetic:tone?duration=0.1", str(target)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and str(partial.path) in error and "--clean" in error

    assert main(["run", "--source", str(target), "-q"]) == 2
    error = capsys.readouterr().err
    assert partial.path.name in error and "unfinished" in error, error

    assert main(["record", "synthetic:tone?duration=0.1", str(target), "--clean"]) == 0
    assert f"removed unfinished recording {partial.path}" in capsys.readouterr().err
    assert partial_folders(target) == []
    assert read_recording(target).streams[0].frames == 4  # 0.1 s in 32 ms frames


def test_partial_of_a_running_recorder_is_left_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mine = tmp_path / f".rec.partial-{os.getpid()}-0badcafe"  # this process is alive
    mine.mkdir()
    assert main(["record", "synthetic:tone?duration=0.1", str(tmp_path / "rec"), "--clean"]) == 2
    assert f"process {os.getpid()} is already recording it" in capsys.readouterr().err
    assert mine.is_dir() and not (tmp_path / "rec").exists()


def test_endless_source_needs_a_limit_unless_realtime(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["record", "synthetic:tone", str(tmp_path / "rec")]) == 2
    assert "never ends" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


async def test_stop_event_ends_streams_and_keeps_the_recording(tmp_path: Path) -> None:
    clock = VirtualClock()
    source = open_source("synthetic:tone", SourceOptions(pace="realtime"), clock)
    stop = asyncio.Event()

    async def stop_after_one_second() -> None:
        await clock.sleep(1.0)
        stop.set()

    stopper = asyncio.create_task(stop_after_one_second())
    try:
        summary = await record(source, tmp_path / "rec", clock=clock, stop=stop)
    finally:
        await source.aclose()
        await stopper
    # 32 ms frames delivered at their pts: 0.000 ... 0.992 s came before the stop.
    assert summary.frames == {"tone": 32}
    (stream,) = read_recording(tmp_path / "rec").streams
    assert list(stream.times["index"]) == list(range(32))
    assert stream.end == StreamEnd("tone", 32, "stopped")
    assert os.listdir(tmp_path) == ["rec"]


async def test_cancel_right_after_stop_discards_the_recording(tmp_path: Path) -> None:
    # Both signals handled in one turn of the loop: the abort wins, nothing is left.
    clock = VirtualClock()
    source = open_source("synthetic:tone", SourceOptions(pace="realtime"), clock)
    stop = asyncio.Event()
    task = asyncio.create_task(record(source, tmp_path / "rec", clock=clock, stop=stop))
    await clock.sleep(0.5)
    stop.set()
    task.cancel()
    try:
        with pytest.raises(asyncio.CancelledError):
            await task
    finally:
        await source.aclose()
    assert os.listdir(tmp_path) == []
