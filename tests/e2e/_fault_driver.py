"""One operation in its own process, with a pause at a chosen point (tests/e2e/test_faults.py SIGKILLs it there).

    python tests/e2e/_fault_driver.py OP ARGS...

OP: latent-cache WORK OUT DATA_VERSION | text-cache WORK OUT | register FOLDER NAME |
promote NAME VERSION | version ROOT | train CACHE OUT CONFIG.json PACE

The pause: STEPVIDEO_FAULT_AT="module:attr[.attr]" names a function; its STEPVIDEO_FAULT_NTH-th call
(default 1; with STEPVIDEO_FAULT_MATCH, of the calls whose arguments' repr contains it) runs
(STEPVIDEO_FAULT_WHEN=after, the default) or not yet (before), then the process
prints "FAULT-POINT" and sleeps until it is killed. Without it the operation runs to the end and
prints "DONE <json>".
"""

import functools
import importlib
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def _install_hook() -> None:
    spec = os.environ.get("STEPVIDEO_FAULT_AT")
    if not spec:
        return
    module, _, attrs = spec.partition(":")
    owner = importlib.import_module(module)
    *path, name = attrs.split(".")
    for part in path:
        owner = getattr(owner, part)
    real = getattr(owner, name)
    nth, after = int(os.environ.get("STEPVIDEO_FAULT_NTH", "1")), os.environ.get("STEPVIDEO_FAULT_WHEN", "after") == "after"
    match = os.environ.get("STEPVIDEO_FAULT_MATCH", "")  # count only the calls whose arguments contain it
    calls = {"n": 0}

    def pause() -> None:
        print("FAULT-POINT", flush=True)
        time.sleep(600)

    @functools.wraps(real)
    def hooked(*args, **kwargs):
        if match and match not in repr((args, kwargs)):
            return real(*args, **kwargs)
        calls["n"] += 1
        n = calls["n"]
        if n == nth and not after:
            pause()
        out = real(*args, **kwargs)
        if n == nth and after:
            pause()
        return out

    setattr(owner, name, staticmethod(hooked) if isinstance(owner.__dict__.get(name), staticmethod) else hooked)


def _encoders(work: Path) -> dict:
    from stepvideo.models.text_encoders import TextEncoder

    return {k: TextEncoder.from_pretrained(str(work / "enc" / k), kind=k) for k in ("llm", "clip")}


def main() -> None:
    op, args = sys.argv[1], sys.argv[2:]
    result: dict = {}
    if op in ("latent-cache", "text-cache"):
        import torch

        from stepvideo.data.manifest import read_manifest

        work = Path(args[0])
        rows = read_manifest(work / "data" / "manifest.jsonl")
        _install_hook()
        if op == "latent-cache":
            from stepvideo.data.latent_cache import build_latent_cache
            from stepvideo.models.vae import VAEConfig, VideoVAE

            torch.manual_seed(0)
            build_latent_cache(rows, work / "data", VideoVAE(VAEConfig.tiny()), _encoders(work), args[1],
                               data_version=args[2], vae_version="tiny-0", low_res=(16, 16), batch_size=2,
                               progress=False, max_shard_bytes=1)  # a shard per media: several files to kill between
        else:
            from stepvideo.data.text_cache import build_text_cache

            build_text_cache({r["id"]: r["caption"] for r in rows}, _encoders(work), args[1], progress=False)
    elif op == "register":
        from stepvideo import tracking

        _install_hook()
        with tracking.run("fault-register", experiment="faults"):
            result["version"] = tracking.register_folder(args[0], args[1], tags={"weights_hash": "w"},
                                                         aliases=("candidate",))
    elif op == "promote":
        from stepvideo.registry.promotion import promote_by_person

        _install_hook()
        result = promote_by_person(args[0], args[1], user="fault-test", experiment="faults")
    elif op == "version":
        from stepvideo.data.versioning import version_data

        _install_hook()
        result["version"] = version_data(args[0], "data", push=True)
    elif op == "train":
        from stepvideo import tracking
        from stepvideo.training.dit_trainer import DiTTrainConfig, train_dit

        cfg = DiTTrainConfig.from_dict(json.loads(Path(args[2]).read_text()))
        pace = float(args[3])

        calls = {"n": 0}

        def log(step, metrics):  # what stage_dit logs, then a pause so the test can stop the server mid-run
            calls["n"] += 1
            tracking.log_metrics(metrics, step=step)
            time.sleep(pace)

        with tracking.run("fault-train", experiment="faults"):
            out = train_dit(cfg, args[0], args[1], log_fn=log, progress=False)
        result = {"step": out["step"], "trained_here": calls["n"]}
    else:
        raise SystemExit(f"unknown op {op!r}")
    print("DONE " + json.dumps(result, default=str), flush=True)


if __name__ == "__main__":
    main()
