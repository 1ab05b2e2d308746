"""Worker for the ObjectStorageModel race: run in processes started with the
'spawn' method (the library's Go runtime does not survive fork)."""

from __future__ import annotations

import os
import time
import traceback


def race(name: str, jobs, barrier, delay: float, results) -> None:
    """For each (label, env, model_uri, dst) job: wait for the other racer at
    the barrier, then download model_uri into dst through ObjectStorageModel.
    The download is slowed by `delay` seconds per pull_files call so that the
    racers overlap. Puts (name, [report, ...]) or (name, error text) on
    results."""
    try:
        from runai_model_streamer.safetensors_streamer import safetensors_streamer as files

        original = files.pull_files

        def slow_pull_files(*args, **kwargs):
            time.sleep(delay)
            return original(*args, **kwargs)

        files.pull_files = slow_pull_files  # what ObjectStorageModel.pull_files calls
        reports = []
        for label, env, uri, dst in jobs:
            os.environ.update(env)
            try:
                barrier.wait(timeout=120)
                start = time.monotonic()
                with files.ObjectStorageModel(model_path=uri, dst=dst) as model:
                    entered = time.monotonic() - start
                    downloaded = not model._skip
                    model.pull_files(allow_pattern=["*.safetensors"])
                    model.pull_files(ignore_pattern=["*.safetensors"])
                    directory = model.dir
                files_seen = sorted(
                    os.path.relpath(os.path.join(d, f), directory)
                    for d, _, fs in os.walk(directory) for f in fs
                )
                reports.append({"label": label, "downloaded": downloaded, "entered_s": entered,
                                "dir": directory, "files": files_seen})
            finally:
                for k in env:
                    os.environ.pop(k, None)
        results.put((name, reports))
    except BaseException:  # noqa: BLE001 - reported to the parent
        results.put((name, traceback.format_exc()))
