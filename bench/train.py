"""Local training throughput and peak memory of one client: :meth:`pftray.fed.client.ClientTrainer.fit` on a
synthetic client, for the tiny config (the test suite's sizes, 32 px), the quickstart config (64 px) and a medium
config at 256 px (``medium256``: VAE 32-64-128-128, latent 32x32, UNet 64-128-256 with 2 layers per block).

Throughput is frames per second (a sample is one frame of a clip window: ``batch_clips * window`` a step).
Two figures: ``step_fps`` counts only the optimiser steps (``fit`` with E steps minus ``fit`` with 0 steps,
which still runs the reliability scalars and the validation loss), ``fit_fps`` the whole ``fit`` call. Peak
memory is the process's peak resident set (``getrusage`` maxrss: torch allocates outside tracemalloc), measured
in a fresh subprocess per setting; on GPU also ``torch.cuda.max_memory_allocated``.

GPU section (only when ``torch.cuda.is_available()``, otherwise skipped with a message): fp32, bf16 autocast
(``train.precision``), bf16 + gradient checkpointing (``model.gradient_checkpointing``), bf16 + channels-last
UNet (applied here: pftray has no option for it), and several clients training at once on one GPU (separate
processes, as fractional-GPU worker actors run).

    python -m bench train [--settings tiny quickstart] [--steps 8] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
MEDIUM256 = [
    "data.resolution=256", "model.vae_channels=[32,64,128,128]", "model.latent_channels=4",
    "model.unet_channels=[64,128,256]", "model.unet_layers_per_block=2", "model.attention_head_dim=32",
    "model.cross_attention_dim=256",
]
SETTINGS = ("tiny", "quickstart", "medium256")


def setting_config(name: str, *, steps: int, precision: str = "fp32", checkpointing: bool = False):
    """The Config of a named setting: ``tiny`` (tests/tinycfg sizes), ``quickstart`` (64 px, no backbone) or
    ``medium256`` (256 px)."""
    from pftray.config import config_from_dict, load_config

    sets = [
        f"train.local_steps={steps}",
        f"train.precision={precision}",
        f"model.gradient_checkpointing={str(checkpointing).lower()}",
    ]
    if name == "tiny":
        from tests.tinycfg import TINY

        return config_from_dict(TINY).replace(**{k: _parse(v) for k, v in (s.split("=", 1) for s in sets)})
    if name == "quickstart":
        return load_config(REPO / "configs" / "quickstart.yaml", ["model.backbone=", *sets])
    if name == "medium256":
        return load_config(REPO / "configs" / "quickstart.yaml", ["model.backbone=", *MEDIUM256, *sets])
    raise ValueError(f"setting must be one of {SETTINGS}, got {name!r}")


def _parse(v: str) -> Any:
    return {"true": True, "false": False}.get(v, int(v) if v.isdigit() else v)


def measure_fit(
    name: str,
    *,
    steps: int,
    repeats: int,
    device: str = "cpu",
    precision: str = "fp32",
    checkpointing: bool = False,
    channels_last: bool = False,
) -> dict[str, Any]:
    """Time ``fit`` with ``steps`` and with 0 local steps on one synthetic client (best of ``repeats``)."""
    import numpy as np
    import torch

    from pftray.fed.client import ClientTrainer
    from pftray.fed.host import ClientProvider
    from pftray.model.adapters import flatten_state, get_adapter_state

    torch.manual_seed(0)
    cfg = setting_config(name, steps=steps, precision=precision, checkpointing=checkpointing)
    trainer = ClientTrainer(cfg, device=device)
    if channels_last:
        trainer.model.unet.to(memory_format=torch.channels_last)
    client = ClientProvider(cfg).get(0)
    global_shared = flatten_state(get_adapter_state(trainer.model.unet, "shared"))
    rss_model = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def timed(local_steps: int) -> float:
        best = float("inf")
        for r in range(repeats + 1):  # the first call warms up (allocator, kernels) and is not counted
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                # 0 local steps: fit averages an empty loss list (NaN); only its fixed cost is wanted here
                warnings.simplefilter("ignore", RuntimeWarning)
                trainer.fit(client, None, global_shared, server_round=1, local_steps=local_steps)
            if device == "cuda":
                torch.cuda.synchronize()
            if r:
                best = min(best, time.perf_counter() - t0)
        return best

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t_full, t_zero = timed(steps), timed(0)
    frames = steps * min(cfg.train.batch_clips, len(client.train)) * cfg.train.window
    out = {
        "setting": name,
        "device": device,
        "precision": precision,
        "gradient_checkpointing": checkpointing,
        "channels_last": channels_last,
        "resolution": cfg.data.resolution,
        "steps": steps,
        "frames_per_step": frames // steps,
        "fit_s": t_full,
        "fit_zero_steps_s": t_zero,
        "fit_fps": frames / t_full,
        "step_fps": frames / max(t_full - t_zero, 1e-9),
        "shared_params": int(np.asarray(global_shared).size),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_after_model_mb": rss_model,
        "torch_threads": torch.get_num_threads(),
    }
    if device == "cuda":
        out["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
        out["gpu"] = torch.cuda.get_device_name(0)
    return out


def run_isolated(args: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``python -m bench.train --one ...`` in a fresh process (peak RSS is per process)."""
    proc = subprocess.run(
        [sys.executable, "-m", "bench.train", "--one", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
    )
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    raise RuntimeError(
        f"bench.train --one {' '.join(args)} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
    )


def concurrent_clients(name: str, *, k: int, steps: int, repeats: int) -> dict[str, Any]:
    """``k`` processes training one client each on the same GPU at once: aggregate frames/s."""
    args = [
        "--settings",
        name,
        "--steps",
        str(steps),
        "--repeats",
        str(repeats),
        "--device",
        "cuda",
        "--precision",
        "bf16",
    ]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "bench.train", "--one", *args],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(k)
    ]
    results = []
    for p in procs:
        out, err = p.communicate()
        line = next((x for x in out.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            raise RuntimeError(f"concurrent client failed (exit {p.returncode}):\n{err[-3000:]}")
        results.append(json.loads(line[len("RESULT ") :]))
    return {
        "setting": name,
        "clients_per_gpu": k,
        "aggregate_step_fps": sum(r["step_fps"] for r in results),
        "per_client_step_fps": [r["step_fps"] for r in results],
        "cuda_peak_mb_per_client": max(r["cuda_peak_mb"] for r in results),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--settings", nargs="+", default=["tiny", "quickstart"], choices=SETTINGS)
    ap.add_argument("--steps", type=int, default=8, help="local steps of the timed fit")
    ap.add_argument("--repeats", type=int, default=2, help="timed fits per figure (best is kept)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads on CPU")
    ap.add_argument("--clients-per-gpu", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--sections", nargs="+", default=["cpu", "gpu"], choices=("cpu", "gpu"))
    ap.add_argument("--json", default="bench/results/train.json")
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    ap.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    ap.add_argument("--checkpointing", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--channels-last", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        import torch

        torch.set_num_threads(args.threads)
        res = measure_fit(
            args.settings[0],
            steps=args.steps,
            repeats=args.repeats,
            device=args.device,
            precision=args.precision,
            checkpointing=args.checkpointing,
            channels_last=args.channels_last,
        )
        print("RESULT " + json.dumps(res), flush=True)
        return 0
    common = ["--steps", str(args.steps), "--repeats", str(args.repeats), "--threads", str(args.threads)]
    cpu = []
    for name in args.settings if "cpu" in args.sections else []:
        r = run_isolated(["--settings", name, *common])
        cpu.append(r)
        print(
            f"CPU {name:10s} {r['resolution']:3d}px  step {r['step_fps']:7.1f} frames/s  whole fit "
            f"{r['fit_fps']:7.1f} frames/s  fit {r['fit_s']:.2f}s  peak RSS {r['peak_rss_mb']:.0f} MB "
            f"({args.threads} thread)",
            flush=True,
        )
    gpu: dict[str, Any] = {}
    import torch

    if "gpu" not in args.sections:
        gpu = {"skipped": "not asked for (--sections)"}
    elif not torch.cuda.is_available():
        gpu = {"skipped": "torch.cuda.is_available() is False on this machine"}
        print("GPU section skipped: no CUDA device", flush=True)
    else:
        variants = [
            ("fp32", []),
            ("bf16", ["--precision", "bf16"]),
            ("bf16+checkpointing", ["--precision", "bf16", "--checkpointing"]),
            ("bf16+channels_last", ["--precision", "bf16", "--channels-last"]),
        ]
        gpu = {"device": torch.cuda.get_device_name(0), "runs": [], "concurrent": []}
        for name in args.settings:
            for label, extra in variants:
                r = run_isolated(["--settings", name, *common, "--device", "cuda", *extra])
                r["variant"] = label
                gpu["runs"].append(r)
                print(
                    f"GPU {name:10s} {label:20s} step {r['step_fps']:8.1f} frames/s  peak "
                    f"{r['cuda_peak_mb']:.0f} MiB",
                    flush=True,
                )
            for k in args.clients_per_gpu:
                c = concurrent_clients(name, k=k, steps=args.steps, repeats=args.repeats)
                gpu["concurrent"].append(c)
                print(
                    f"GPU {name:10s} {k} clients at once  aggregate {c['aggregate_step_fps']:8.1f} frames/s",
                    flush=True,
                )
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"cpu": cpu, "gpu": gpu}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
