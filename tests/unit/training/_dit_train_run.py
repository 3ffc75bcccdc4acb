"""Run `train_dit` in its own process (the SIGKILL-resume and multi-rank tests launch this).

    python tests/unit/training/_dit_train_run.py CONFIG.json CACHE_DIR OUT_DIR [--pace SECONDS]

`--pace` sleeps after every step (through log_fn), so a test can kill the process mid-run.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from stepvideo.training.dit_trainer import DiTTrainConfig, train_dit  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("cache")
    ap.add_argument("out")
    ap.add_argument("--pace", type=float, default=0.0)
    a = ap.parse_args()
    cfg = DiTTrainConfig.from_dict(json.loads(Path(a.config).read_text()))
    log = (lambda step, m: time.sleep(a.pace)) if a.pace else None
    result = train_dit(cfg, a.cache, a.out, log_fn=log, progress=False)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun only rank 0 reports: two ranks' lines interleave
        return
    print(json.dumps({k: v for k, v in result.items() if k != "loss_curve"}))
    print("LOSSES " + json.dumps(result["loss_curve"]))


if __name__ == "__main__":
    main()
